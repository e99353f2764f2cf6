"""Benchmark: our ranked-group reward trainer vs TRL's RewardTrainer on the same rankings expanded to pairs.

    .venv/bin/python bench/bench_reward.py                # K=4 and K=8, seeds 0-2, hh-like lengths
    .venv/bin/python bench/bench_reward.py --k 4 --prompts 200 --seeds 0
    .venv/bin/python bench/bench_reward.py --history-words 0        # short prompts (the earlier task)
    .venv/bin/python bench/bench_reward.py --recipes 1e-3:8 1e-3:8:raw  # ours as lr:prompts per step[:raw]; first = default

Per K and seed, in one process:
- throughput, one epoch each: ours without prefix sharing, ours with it (order swapped on odd seeds), and TRL at
  the optimizer steps and pairs per step of our default recipe; pairs per second and per CPU second;
- HEADLINE, time to TRL's one-epoch held-out accuracy: each recipe of ours (prefix sharing on) trains for up to
  ``--max-epochs`` epochs, evaluated ``--evals-per-epoch`` times an epoch, and stops at the first evaluation at
  or above TRL's one-epoch accuracy; its time is the CPU seconds of its training steps until then (evaluation
  excluded), against TRL's CPU seconds for its epoch. Evaluations come every 1/4 epoch, so the time is rounded
  up to the next one; taking the FIRST of several noisy evaluations that reaches the target is slightly in
  ours' favour (the held-out accuracy's standard error is about 0.01 here).
The task: each prompt asks about one topic word after an earlier exchange of ``--history-words`` filler words
(10: the conversation is ≈ 3.7× a reply in tokens, hh-rlhf-like); its K replies mix that word and another topic
word into filler; a labeler ranks them by (copies of the asked-for word − 0.1 × length + ``--noise`` × Gumbel
noise), a total order with C(K,2) pairs, i.e. Bradley-Terry choices; "oracle" is the noiseless utility's accuracy
on the same held-out labels (the ceiling). Split by prompt, 20 % held out.

What is held equal, so that the ratio measures the recipe and not the setup:
- the same tiny Llama-style reward model directory (same seed, same initial weights), same tokenizer;
- the same token ids: both sides use sequences produced by ``training.ml.data.encode_group`` (same chat
  rendering, max_length 256, nothing truncated), given to TRL pre-tokenised as ``chosen_ids``/``rejected_ids``;
- the same optimisation as the default recipe: AdamW at the same ``learning_rate`` setting, linear decay, no
  warm-up, gradient clipping at 1.0, fp32, dropout off, the same optimizer steps per epoch (TRL's batch in pairs =
  our pairs per step: B prompts × their pairs). The one difference is the trainer's default ``group_lr_scaling``:
  ours divides that setting by √(pairs per prompt) = √C(K,2), because its step's C(K,2)·B pairs share B·K rewards
  and are ≈ 3× noisier than TRL's as many independent pairs (measured, docs/reward_model.md); a recipe ending in
  ``:raw`` turns it off (ours at TRL's learning rate, the default before issue #14);
- the same process, machine and torch thread count (1: with several threads on a busy machine OpenMP threads
  spin, and neither wall nor CPU seconds measure the work), run one after the other;
- held-out accuracy from the same function (``trainers.reward.evaluate``) on the same held-out prompts.
Throughput = training pairs / seconds of the training steps (ours: should_stop to on_step of each step; TRL: the
whole ``trainer.train()`` with evaluation, saving and logging off). CPU seconds (``time.process_time``) are the
steadier figure on a shared machine; wall seconds are printed too.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from training.ml.collators import RankedGroupCollator  # noqa: E402
from training.ml.config import RewardConfig  # noqa: E402
from training.ml.data import encode_groups, split_by_prompt  # noqa: E402
from training.ml.tiny_models import SYNTHETIC_WORDS, build_tiny_reward_model, build_tokenizer  # noqa: E402
from training.ml.trainers.reward import evaluate, train_reward_model  # noqa: E402
from training.ml.types import NullHooks, RankedGroup  # noqa: E402


TOPICS = ["sunny", "rain", "tree", "river"]
FILLER = [w for w in SYNTHETIC_WORDS if w not in TOPICS]


def clean_utility(reply: str, topic: str) -> float:
    """What the synthetic labeler wants: more of the word the prompt asks about, then shorter."""
    words = reply.split()
    return words.count(topic) - 0.1 * len(words)


def noisy_groups(num_prompts: int, k: int, *, seed: int, noise: float, history_words: int = 0) -> list[RankedGroup]:
    """K replies per prompt, ranked once by a labeler whose utility carries Gumbel(0, noise) noise.

    Each prompt asks about one of TOPICS; every reply mixes 0-2 copies of that word and 0-2 of another topic
    into 4-10 filler words, so the reward depends on the prompt and the reply together (the model must read
    both), and the labeler's choices are Bradley-Terry (logistic) in the utility difference.
    ``history_words`` > 0 puts an earlier user/assistant exchange of that many filler words before the
    question (hh-rlhf-like: the conversation several times longer than a reply); it uses its own random
    stream, so the replies and labels are those of ``history_words=0``.
    """
    rng = random.Random(seed)
    groups = []
    for prompt_id in range(num_prompts):
        topic = rng.choice(TOPICS)
        replies, utility = [], []
        for _ in range(k):
            words = rng.choices(FILLER, k=rng.randint(4, 10))
            for word, copies in ((topic, rng.randint(0, 2)), (rng.choice(TOPICS), rng.randint(0, 2))):
                for _ in range(copies):
                    words.insert(rng.randrange(len(words) + 1), word)
            replies.append(" ".join(words))
            gumbel = -math.log(-math.log(rng.random() or 1e-300))
            utility.append(clean_utility(replies[-1], topic) + noise * gumbel)
        order = sorted(range(k), key=lambda i: -utility[i])
        messages = [{"role": "user", "content": f"Tell me about {topic} things, day {prompt_id}."}]
        if history_words:
            history = random.Random(seed * 1_000_003 + prompt_id).choices(FILLER, k=history_words)
            half = history_words // 2
            messages = [{"role": "user", "content": " ".join(history[:half])},
                        {"role": "assistant", "content": " ".join(history[half:])}] + messages
        groups.append(RankedGroup(prompt_id=prompt_id, messages=messages, responses=replies,
                                  rankings=[[[i] for i in order]]))
    return groups


def oracle_accuracy(groups: list[RankedGroup]) -> float:
    """Share of the labelled pairs the noiseless utility orders the same way: what a perfect model scores
    (in expectation; on a finite held-out set a model can land above it by chance)."""
    diffs = []
    for g in groups:
        topic = g.messages[-1]["content"].split()[3]
        diffs += [clean_utility(g.responses[w], topic) - clean_utility(g.responses[l], topic) for w, l, _, _ in g.pairs()]
    hits = [1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs]  # a tie counts one half, as in pairwise_accuracy
    return sum(hits) / max(len(hits), 1)


def build_model(root: Path, groups, *, hidden: int, layers: int, seed: int) -> str:
    texts = [r for g in groups for r in g.responses] + [m["content"] for g in groups for m in g.messages]
    tokenizer = build_tokenizer(texts, root / "tokenizer", vocab_size=512)
    return str(build_tiny_reward_model(root / "model", tokenizer, hidden=hidden, layers=layers, heads=4, seed=seed))


def held_out_accuracy(model, tokenizer, held_out, max_length: int) -> float:
    encoded, _ = encode_groups(tokenizer, held_out, max_length=max_length)
    collate = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id)
    return evaluate(model, encoded, collate, torch.device("cpu"), batch_size=16)["accuracy"]


class StepClock(NullHooks):
    """CPU and wall seconds of the training steps only (from should_stop to on_step: evaluation excluded), and
    the held-out accuracy at each evaluation with the step seconds spent until then; with a ``target``, the
    run stops at the first evaluation that reaches it (the time to accuracy is known then)."""

    def __init__(self, target: float | None = None) -> None:
        super().__init__()
        self.cpu = self.wall = 0.0
        self.curve: list[tuple[float, float, float]] = []  # (cpu s, wall s, held-out accuracy)
        self.target, self._started = target, None

    def should_stop(self) -> bool:
        if self.target is not None and self.curve and self.curve[-1][2] >= self.target:
            return True
        self._started = (time.process_time(), time.perf_counter())
        return False

    def on_step(self, step, total, metrics) -> None:
        super().on_step(step, total, metrics)
        self.cpu += time.process_time() - self._started[0]
        self.wall += time.perf_counter() - self._started[1]

    def on_eval(self, step, metrics) -> None:
        super().on_eval(step, metrics)
        self.curve.append((self.cpu, self.wall, metrics["accuracy"]))


def run_ours(config: RewardConfig, train, held_out, out: Path, target: float | None = None) -> dict:
    started, clock = time.perf_counter(), StepClock(target)
    summary = train_reward_model(config, train, held_out, output_dir=out, hooks=clock, resume=False)
    assert summary.get("prefix_sharing", config.share_prefix) == config.share_prefix, clock.messages
    pairs = sum(metrics["pairs"] for _, metrics in clock.steps)
    return {
        "pairs_seen": pairs, "steps": summary["steps"], "loop_s": clock.wall, "loop_cpu_s": clock.cpu,
        "call_s": time.perf_counter() - started, "accuracy": clock.curve[-1][2], "curve": clock.curve,
        "epochs": summary["steps"] / math.ceil(len(train) / config.batch_size),
    }


def run_trl(config: RewardConfig, train, held_out, out: Path, pairs_per_step: int) -> dict:
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    encoded, _ = encode_groups(tokenizer, train, max_length=config.max_length)
    rows = [{"chosen_ids": g.input_ids[w], "rejected_ids": g.input_ids[l]} for g in encoded for w, l, _, _ in g.pairs]
    args = TRLRewardConfig(
        output_dir=str(out), per_device_train_batch_size=pairs_per_step, num_train_epochs=1,
        learning_rate=config.learning_rate, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_length=config.max_length, bf16=False, fp16=False, gradient_checkpointing=False,
        disable_dropout=True, use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=config.seed, data_seed=config.seed,
        dataloader_num_workers=0, dataset_num_proc=None,
    )
    trainer = RewardTrainer(model=config.base_model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer)
    torch.set_num_threads(config.num_threads)
    loop_started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train()
    loop_s, loop_cpu_s = time.perf_counter() - loop_started, time.process_time() - cpu_started
    return {
        "pairs_seen": len(rows), "steps": result.global_step, "loop_s": loop_s, "loop_cpu_s": loop_cpu_s,
        "call_s": time.perf_counter() - started, "epochs": 1,
        "accuracy": held_out_accuracy(trainer.model.eval(), tokenizer, held_out, config.max_length),
    }


def ours_config(base: str, *, batch_size: int, epochs: float, threads: int, seed: int, learning_rate: float = 1e-3,
                share_prefix: bool = True, eval_every: int = 10**6, group_lr_scaling: bool = True) -> RewardConfig:
    return RewardConfig(
        base_model=base, batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, max_length=256,
        eval_every=eval_every, checkpoint_every=10**6, num_threads=threads, seed=seed, share_prefix=share_prefix,
        group_lr_scaling=group_lr_scaling,
    )


def add_rates(row: dict) -> dict:
    row["pairs_per_s"] = row["pairs_seen"] / row["loop_s"]
    row["pairs_per_cpu_s"] = row["pairs_seen"] / row["loop_cpu_s"]
    return row


def time_to(curve: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    """(cpu s, wall s) of training steps until the first evaluation at or above ``target``; None if never."""
    return next(((cpu, wall) for cpu, wall, accuracy in curve if accuracy >= target), None)


def bench(k: int, *, seed: int, args) -> dict:
    """One seed at one K.

    Throughput, one epoch each, one after the other in this process: ours without prefix sharing, ours with it
    (the order swapped on odd seeds), TRL at the optimizer steps and pairs per step of our default recipe.
    Time to accuracy: each recipe in ``args.recipes`` (lr, prompts per step; the first is the default) trains
    for ``args.max_epochs`` epochs with prefix sharing, evaluated ``args.evals_per_epoch`` times per epoch; its
    time is the training-step CPU seconds until the first evaluation at or above TRL's one-epoch accuracy.
    """
    groups = noisy_groups(args.prompts, k, seed=seed, noise=args.noise, history_words=args.history_words)
    train, held_out = split_by_prompt(groups, 0.2, seed=seed)
    (lr, batch_size, scaled), threads = args.recipes[0], args.threads
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_model(root / "base", groups, hidden=args.hidden, layers=args.layers, seed=seed)
        rows = {}
        for share in ((False, True) if seed % 2 == 0 else (True, False)):
            config = ours_config(base, batch_size=batch_size, epochs=1.0, threads=threads, seed=seed,
                                 learning_rate=lr, share_prefix=share, group_lr_scaling=scaled)
            rows["shared" if share else "unshared"] = add_rates(run_ours(config, train, held_out, root / f"o{share}"))
        pairs_per_step = -(-rows["shared"]["pairs_seen"] // rows["shared"]["steps"])
        config = ours_config(base, batch_size=batch_size, epochs=1.0, threads=threads, seed=seed, learning_rate=lr)
        rows["trl"] = add_rates(run_trl(config, train, held_out, root / "trl", pairs_per_step))
        target, to_target = rows["trl"]["accuracy"], {}
        for lr, batch_size, scaled in args.recipes:
            steps_per_epoch = math.ceil(len(train) / batch_size)
            config = ours_config(base, batch_size=batch_size, epochs=float(args.max_epochs), threads=threads,
                                 seed=seed, learning_rate=lr, group_lr_scaling=scaled,
                                 eval_every=max(1, steps_per_epoch // args.evals_per_epoch))
            run = add_rates(run_ours(config, train, held_out, root / f"t{lr}-{batch_size}-{scaled}", target=target))
            to_target[(lr, batch_size, scaled)] = {**run, "reached": time_to(run["curve"], target)}
        encoded_lengths = prompt_reply_tokens(base, groups)
    return {"k": k, "seed": seed, "rows": rows, "to_target": to_target, "oracle": oracle_accuracy(held_out),
            "tokens": encoded_lengths}


def prompt_reply_tokens(base: str, groups, max_length: int = 256) -> tuple[float, float]:
    """Mean tokens of the shared conversation and of a reply (the part after it), as the trainer encodes them."""
    from training.ml.prefix_sharing import shared_prefix_length

    encoded, _ = encode_groups(AutoTokenizer.from_pretrained(base), groups, max_length=max_length)
    shared = [shared_prefix_length(g.input_ids) for g in encoded]
    replies = [len(seq) - p for g, p in zip(encoded, shared) for seq in g.input_ids]
    return statistics.fmean(shared), statistics.fmean(replies)


def print_row(k: int, who: str, seed: int, r: dict) -> None:
    print(f"{k:>2} {who:<16} {seed:>4} {r['epochs']:>4.2f} {r['pairs_seen']:>7} {r['steps']:>5} {r['loop_s']:>7.2f} "
          f"{r['loop_cpu_s']:>7.2f} {r['pairs_per_s']:>8.1f} {r['pairs_per_cpu_s']:>11.1f} {r['accuracy']:>8.4f}",
          flush=True)


def recipe_name(recipe: tuple[float, int, bool]) -> str:
    lr, batch_size, scaled = recipe
    return f"lr{lr:g}{'' if scaled else ' raw'} B={batch_size}"


def print_summary(k: int, results: list[dict], recipes: list[tuple[float, int, bool]], max_epochs: int) -> None:
    n = len(results)
    trl = [r["rows"]["trl"] for r in results]
    print(f"K={k} throughput, one epoch each, mean ± std over {n} seeds (pairs per second ours / TRL):")
    for name in ("shared", "unshared"):
        rows = [r["rows"][name] for r in results]
        wall = mean_std([o["pairs_per_s"] / t["pairs_per_s"] for o, t in zip(rows, trl)], 2)
        print(f"    ours {name:<8} {wall} wall, "
              f"{mean_std([o['pairs_per_cpu_s'] / t['pairs_per_cpu_s'] for o, t in zip(rows, trl)], 2)} CPU; "
              f"one-epoch held-out acc {mean_std([o['accuracy'] for o in rows])}", flush=True)
    shared_gain = [r["rows"]["shared"]["pairs_per_cpu_s"] / r["rows"]["unshared"]["pairs_per_cpu_s"] for r in results]
    print(f"    prefix sharing alone: {mean_std(shared_gain, 2)}× pairs per CPU s; TRL one-epoch held-out acc "
          f"{mean_std([t['accuracy'] for t in trl])} in {mean_std([t['loop_cpu_s'] for t in trl], 1)} CPU s; "
          f"oracle {mean_std([r['oracle'] for r in results])}", flush=True)
    for index, recipe in enumerate(recipes):
        runs = [r["to_target"][recipe] for r in results]
        ratios = [t["loop_cpu_s"] / run["reached"][0] if run["reached"] else 0.0 for run, t in zip(runs, trl)]
        reached = [run["reached"][0] for run in runs if run["reached"]]
        label = "HEADLINE " if index == 0 else "         "
        print(f"K={k} {label}time to TRL's one-epoch held-out accuracy, ours {recipe_name(recipe)} "
              f"(≤ {max_epochs} epochs): reached on {len(reached)}/{n} seeds, "
              f"{mean_std(reached, 1) if reached else '-'} CPU s vs TRL {mean_std([t['loop_cpu_s'] for t in trl], 1)}; "
              f"ratio {mean_std(ratios, 2)} (per seed {', '.join(f'{x:.2f}' for x in ratios)}; 0 = not reached); "
              f"epochs run {mean_std([run['epochs'] for run in runs], 2)}", flush=True)


def parse_recipe(text: str) -> tuple[float, int, bool]:
    """"1e-3:8" -> (1e-3, 8, True); "1e-3:8:raw" -> group_lr_scaling off (the learning rate used as given)."""
    lr, batch_size, *raw = text.split(":")
    if raw not in ([], ["raw"]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LR:PROMPTS_PER_STEP or LR:PROMPTS_PER_STEP:raw")
    return float(lr), int(batch_size), not raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (data and init)")
    parser.add_argument("--prompts", type=int, default=1000, help="prompts per K (80%% train, 20%% held out)")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="scale of the labeler's Gumbel noise (0: noiseless, near-saturated task)")
    parser.add_argument("--history-words", type=int, default=10,
                        help="filler words of earlier conversation: 10 makes the prompt ≈ 3.7× a reply in tokens")
    parser.add_argument("--recipes", type=parse_recipe, nargs="+", default=[(1e-3, 8, True)],
                        help="ours as LR:PROMPTS_PER_STEP[:raw] (raw: group_lr_scaling off); the first is the "
                             "default (sets TRL's steps and lr)")
    parser.add_argument("--max-epochs", type=int, default=3, help="epochs of ours in the time-to-accuracy runs")
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 keeps CPU seconds meaningful on a shared machine")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, {args.threads} threads, device cpu, tiny Llama hidden={args.hidden} "
          f"layers={args.layers}, {args.prompts} prompts per K and seed, labeler noise {args.noise}, "
          f"history {args.history_words} words, recipes {[recipe_name(r) for r in args.recipes]} (learning_rate "
          f"setting; ours divides it by √C(K,2) unless raw)")
    print(f"{'K':>2} {'who':<16} {'seed':>4} {'ep':>4} {'pairs':>7} {'steps':>5} {'loop s':>7} {'cpu s':>7} "
          f"{'pairs/s':>8} {'pairs/cpu-s':>11} {'held-out':>8}")
    for k in args.k:
        results = []
        for seed in args.seeds:
            result = bench(k, seed=seed, args=args)
            results.append(result)
            for name, row in result["rows"].items():
                print_row(k, name, seed, row)
            for recipe, row in result["to_target"].items():
                reached = row["reached"]
                print_row(k, recipe_name(recipe), seed, row)
                print(f"{'':>8} curve (cpu s, acc): "
                      f"{' '.join(f'{c:.1f}:{a:.3f}' for c, _, a in row['curve'])}; reached TRL's "
                      f"{result['rows']['trl']['accuracy']:.4f} at {f'{reached[0]:.2f} CPU s' if reached else 'never'}",
                      flush=True)
            prompt, reply = result["tokens"]
            print(f"{k:>2} {'oracle':<16} {seed:>4} {result['oracle']:.4f}; tokens: conversation {prompt:.1f}, "
                  f"reply {reply:.1f} ({prompt / reply:.2f}×)", flush=True)
        print_summary(k, results, args.recipes, args.max_epochs)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def mean_std(values: list[float], digits: int = 4) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


if __name__ == "__main__":
    main()
