"""Diagnostics behind issue #14 (docs/reward_model.md, "Why a K-wise step teaches less per pair"), on the task of
bench/bench_reward.py. Not a benchmark: no reference library runs here.

    .venv/bin/python bench/reward_diagnose.py ceiling --k 8 --seeds 100 101      # prompt-blind vs prompt-aware fits
    .venv/bin/python bench/reward_diagnose.py noise --k 8 --seed 100 --epochs 1  # gradient noise of one step
    .venv/bin/python bench/reward_diagnose.py curve --k 8 --seed 100 --epochs 6 --runs lr=1e-3 lr=3e-4,lr_scheduler=constant

ceiling: a linear Bradley-Terry fit on hand-made reply features, without the prompt (length, copies of each topic
word) and with it (copies of the asked-for topic, of the others): what a model that does not read the prompt can
reach, against the oracle.
noise: E|g − G|² of one step's gradient around the full-data gradient G, for ours (B prompts, all their pairs) and
for TRL-like steps (as many pairs drawn at random from all prompts), at the initial weights or after ``--epochs`` of
our trainer at lr 1e-3 (group_lr_scaling off).
curve: our trainer's held-out accuracy, mean training loss and gradient norm before clipping every 1/4 epoch; each
run is comma-separated settings (lr, B, epochs, any RewardConfig field); ``--pl`` swaps the loss for the
Plackett-Luce listwise likelihood (tried, not kept); a run stops once held-out accuracy reaches 0.74.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import bench_reward as br  # noqa: E402
from training.ml import losses  # noqa: E402
from training.ml.collators import RankedGroupCollator  # noqa: E402
from training.ml.data import encode_groups, pad_right, split_by_prompt  # noqa: E402
from training.ml.trainers import reward as R  # noqa: E402


def task(k: int, seed: int):
    groups = br.noisy_groups(1000, k, seed=seed, noise=0.5, history_words=10)
    return groups, *split_by_prompt(groups, 0.2, seed=seed)


def ceiling(args) -> None:
    for seed in args.seeds:
        _, train, held = task(args.k, seed)

        def features(g, i, blind):
            topic, words = g.messages[-1]["content"].split()[3], g.responses[i].split()
            if blind:
                return [len(words)] + [words.count(t) for t in br.TOPICS]
            return [len(words), words.count(topic), sum(words.count(t) for t in br.TOPICS) - words.count(topic)]

        def differences(gs, blind):  # (P, F) chosen − rejected features
            return torch.tensor([[a - b for a, b in zip(features(g, w, blind), features(g, l, blind))]
                                 for g in gs for w, l, _, _ in g.pairs()], dtype=torch.float32)

        fits = []
        for blind in (True, False):
            x_train, x_held = differences(train, blind), differences(held, blind)
            w = torch.zeros(x_train.shape[1], requires_grad=True)
            optimizer = torch.optim.LBFGS([w], max_iter=200)

            def closure():
                optimizer.zero_grad()
                loss = torch.nn.functional.softplus(-(x_train @ w)).mean()
                loss.backward()
                return loss

            optimizer.step(closure)
            fits.append(losses.pairwise_accuracy(x_held @ w.detach(), torch.zeros(len(x_held))).item())
        print(f"K={args.k} seed {seed}: held-out accuracy of a linear BT fit without the prompt {fits[0]:.4f}, "
              f"with it {fits[1]:.4f}; oracle {br.oracle_accuracy(held):.4f}", flush=True)


def noise(args) -> None:
    torch.set_num_threads(1)
    groups, train, held = task(args.k, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = br.ours_config(br.build_model(Path(tmp) / "b", groups, hidden=64, layers=2, seed=args.seed),
                                batch_size=8, epochs=max(args.epochs, 0.01), threads=1, seed=args.seed,
                                group_lr_scaling=False)
        if args.epochs > 0:
            R.train_reward_model(config, train, held, output_dir=Path(tmp) / "o", hooks=br.NullHooks(), resume=False)
            config.base_model = str(Path(tmp) / "o" / "model")
        tokenizer, model = R.load_reward_model(config, br.NullHooks())
    data, _ = encode_groups(tokenizer, train, max_length=256)
    shared = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id, share_prefix=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(batch):  # (num params,) gradient of the pair-mean loss of one batch
        model.zero_grad()
        rewards = R.score(model, batch, torch.device("cpu"), "no")
        losses.bradley_terry_loss(rewards[batch["chosen"]], rewards[batch["rejected"]]).backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    full = sum(gradient(shared(data[i:i + 8])) * len(data[i:i + 8]) for i in range(0, len(data), 8)) / len(data)
    pairs = [(g, w, l) for g in range(len(data)) for w, l, _, _ in data[g].pairs]
    per_step, rng = 8 * math.comb(args.k, 2), random.Random(0)

    def random_pairs():
        sequences, chosen, rejected = [], [], []
        for g, w, l in rng.sample(pairs, per_step):
            chosen.append(len(sequences))
            sequences.append(data[g].input_ids[w])
            rejected.append(len(sequences))
            sequences.append(data[g].input_ids[l])
        input_ids, attention_mask = pad_right(sequences, tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "chosen": torch.tensor(chosen), "rejected": torch.tensor(rejected)}

    makers = {"ours B=8": lambda: shared([data[i] for i in rng.sample(range(len(data)), 8)]),
              "ours B=32": lambda: shared([data[i] for i in rng.sample(range(len(data)), 32)]),
              "TRL-like": random_pairs}
    spread = {name: statistics.fmean((gradient(make()) - full).pow(2).sum().item() for _ in range(args.draws))
              for name, make in makers.items()}
    print(f"K={args.k} seed {args.seed} after {args.epochs:g} epochs at lr 1e-3: |G|² {full.pow(2).sum().item():.4g}, "
          f"{per_step} pairs per step", flush=True)
    for name, value in spread.items():
        print(f"    {name:<10} E|g − G|² {value:.4g}, {value / spread['TRL-like']:.2f}× TRL-like", flush=True)
    effective = per_step * spread["TRL-like"] / spread["ours B=8"]
    print(f"    ours B=8 is as noisy as {effective:.1f} independent pairs of its {per_step} ({effective / 8:.2f} per prompt)")


def plackett_luce(reward_loss):
    """reward_loss with the loss replaced by the Plackett-Luce negative log-likelihood of each ranking (one
    softmax per chosen response over itself and everything ranked below it; one ranking per group here)."""

    def loss(rewards, batch, config, **kwargs):
        out = reward_loss(rewards, batch, config, **kwargs)
        stages, stage = torch.unique(batch["chosen"], return_inverse=True)  # (S,), (P,)
        logits = torch.cat([rewards[stages], rewards[batch["rejected"]]])  # (S + P,)
        segment = torch.cat([torch.arange(len(stages)), stage])
        top = torch.zeros(len(stages)).scatter_reduce(0, segment, logits.detach(), "amax", include_self=False)
        lse = top + torch.zeros(len(stages)).scatter_add(0, segment, (logits - top[segment]).exp()).log()
        out["loss"] = (lse - rewards[stages]).mean()
        return out

    return loss


def curve(args) -> None:
    if args.pl:
        R.reward_loss = plackett_luce(R.reward_loss)
    norms, clip = [], torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *rest, **kwargs):
        norm = clip(params, max_norm, *rest, **kwargs)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip  # the trainer looks it up at call time
    groups, train, held = task(args.k, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = br.build_model(Path(tmp) / "b", groups, hidden=64, layers=2, seed=args.seed)
        for spec in args.runs:
            settings = dict(item.split("=") for item in spec.split(","))
            batch_size = int(settings.pop("B", 8))
            quarter = max(1, math.ceil(len(train) / batch_size) // 4)
            config = br.ours_config(base, batch_size=batch_size, epochs=float(settings.pop("epochs", args.epochs)),
                                    threads=1, seed=args.seed, learning_rate=float(settings.pop("lr", 1e-3)),
                                    eval_every=quarter, group_lr_scaling=False)
            for key, value in settings.items():
                current = getattr(config, key)
                setattr(config, key, value == "1" if isinstance(current, bool) else type(current)(value))
            norms.clear()
            clock = br.StepClock(target=0.74)
            R.train_reward_model(config, train, held, output_dir=Path(tmp) / "o", hooks=clock, resume=False)
            print(f"K={args.k} seed {args.seed} {spec}{' (Plackett-Luce)' if args.pl else ''}:", flush=True)
            for i, (cpu, _, accuracy) in enumerate(clock.curve):
                part = slice(i * quarter, (i + 1) * quarter)
                step_norms = norms[part] or [0.0]
                loss = statistics.fmean([m["loss"] for _, m in clock.steps[part]] or [0.0])
                lr = clock.steps[min(len(clock.steps), (i + 1) * quarter) - 1][1]["lr"]
                print(f"    epoch {(i + 1) / 4:4.2f} cpu {cpu:5.1f} s held-out {accuracy:.4f} train loss {loss:.4f} "
                      f"grad norm median {statistics.median(step_norms):.2f} (clipped {sum(n > 1 for n in step_norms)}"
                      f"/{len(step_norms)}) lr {lr:.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("ceiling", "noise", "curve"):
        command = commands.add_parser(name)
        command.add_argument("--k", type=int, default=8)
        if name == "ceiling":
            command.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
        else:
            command.add_argument("--seed", type=int, default=100)
            command.add_argument("--epochs", type=float, default=1.0 if name == "noise" else 6.0)
        if name == "noise":
            command.add_argument("--draws", type=int, default=40)
        if name == "curve":
            command.add_argument("--runs", nargs="+", default=["lr=1e-3"])
            command.add_argument("--pl", action="store_true")
    args = parser.parse_args()
    {"ceiling": ceiling, "noise": noise, "curve": curve}[args.command](args)


if __name__ == "__main__":
    main()
