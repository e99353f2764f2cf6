"""Why does DPO move a utility the way it does? Per round of the in-memory loop (no reward model, no gate):
the reference round trip, the direction of the labelled pairs, DPO's first and last step, and how the
log-probs of the best and worst tiers moved (likelihood displacement).

    .venv/bin/python bench/dpo_diagnose.py --utility dark_mood --seed 0 [--set dpo_beta=0.1 --set dpo_rpo_alpha=0]

Per round it prints: the mean utility of the round's samples; the largest |stored − recomputed| log π(y|x)
(the stored generation value against a fresh scoring pass of the same policy: DPO's reference must equal the
training forward at step 1); how many pairs have chosen above / below / equal to rejected in noise-free
utility; DPO's loss, implicit-reward accuracy and mean chosen / rejected implicit rewards at its first and
last step; and the mean change of log π(y|x) over DPO of the responses in each ranking's best and worst tier.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml import demo_task  # noqa: E402
from training.ml.generation import load_policy, sequence_logprobs  # noqa: E402
from training.ml.loop import (  # noqa: E402
    LoopConfig, build_sft_policy, round0_dir, round_generate, round_label, round_prompts, round_train_dpo,
)
from training.ml.types import NullHooks  # noqa: E402
from training.ml.utility_suite import SUITE  # noqa: E402


def pair_directions(prompts, groups, utility) -> tuple[int, int, int]:
    """(pairs whose chosen reply has the higher noise-free utility, lower, equal)."""
    up = down = equal = 0
    for messages, group in zip(prompts, groups):
        for w, l, _, _ in group.pairs():
            a, b = utility(messages, group.responses[w]), utility(messages, group.responses[l])
            up, down, equal = up + (a > b), down + (a < b), equal + (a == b)
    return up, down, equal


def tier_shift(groups, before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean Δ log π over DPO of the best-tier and the worst-tier responses of rankings with ≥ 2 tiers."""
    best, worst, pos = [], [], 0
    for g in groups:
        tiers = g.rankings[0]
        if len(tiers) > 1:
            best += [after[pos + i] - before[pos + i] for i in tiers[0]]
            worst += [after[pos + i] - before[pos + i] for i in tiers[-1]]
        pos += len(g.responses)
    return statistics.fmean(best), statistics.fmean(worst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utility", default="dark_mood", choices=list(SUITE))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LoopConfig override")
    args = parser.parse_args()
    kinds = {f.name: type(f.default) for f in dataclasses.fields(LoopConfig)}
    overrides = {key: kinds[key](value) for key, _, value in (item.partition("=") for item in args.set)}
    config = LoopConfig(seed=args.seed, **overrides)
    torch.set_num_threads(config.num_threads)
    utility, pool = SUITE[args.utility], demo_task.make_prompt_pool()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy_dir = build_sft_policy(work, config=config, demonstrations=demo_task.load_demonstrations(),
                                      build_base=demo_task.build_demo_base)
        for r in range(args.rounds + 1):
            prompts = round_prompts(pool, config.prompts_per_round, seed=config.seed, round_index=r)
            model, tokenizer = load_policy(policy_dir)
            samples = round_generate(policy_dir, prompts, config=config, round_index=r, model=model,
                                     tokenizer=tokenizer)
            flat_prompts = [m for m, group in zip(prompts, samples) for _ in group]
            texts = [s.text for group in samples for s in group]
            stored = [s.logprob for group in samples for s in group]
            again = sequence_logprobs(model, tokenizer, flat_prompts, texts).tolist()
            mean_utility = statistics.fmean(utility(m, t) for m, t in zip(flat_prompts, texts))
            print(f"round {r}: utility {mean_utility:+.3f}; max |stored - recomputed log π| "
                  f"{max(abs(a - b) for a, b in zip(stored, again)):.1e}", flush=True)
            if r == args.rounds:
                print("  samples: " + " | ".join(texts[:4]))
                break
            groups = round_label(prompts, samples, utility=utility, config=config, round_index=r)
            up, down, equal = pair_directions(prompts, groups, utility)
            hooks = NullHooks()
            summary = round_train_dpo(policy_dir, groups, output_dir=work / f"dpo{r}", config=config, hooks=hooks,
                                      round0_dir=round0_dir(work))
            first, last = hooks.steps[0], hooks.steps[-1]
            trained, _ = load_policy(summary["policy_dir"])
            after = sequence_logprobs(trained, tokenizer, flat_prompts, texts).tolist()
            best, worst = tier_shift(groups, stored, after)
            print(f"  pairs: chosen better {up}, worse {down}, equal {equal} (noise-free utility)")
            for step, m in (first, last):
                print(f"  DPO step {step:3d}: loss {m['loss']:.4f}, accuracy {m['reward_accuracy']:.3f}, "
                      f"chosen reward {m['chosen_reward']:+.4f}, rejected reward {m['rejected_reward']:+.4f}")
            print(f"  Δ log π over DPO: best tier {best:+.3f}, worst tier {worst:+.3f}", flush=True)
            policy_dir = summary["policy_dir"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
