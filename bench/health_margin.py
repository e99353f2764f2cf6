"""The health gate's NLL-rise limit against measured cases: every policy the in-memory loop trains (default
LoopConfig, so fluent policies the labelers wanted) and junk policies (DPO at a destructive learning rate,
and a policy fine-tuned on byte-junk-prefixed replies), each checked by ``training.ml.health``.

    .venv/bin/python bench/health_margin.py --optimizers dpo grpo --seeds 0 1

Prints one line per gated policy (NLL rise under round 0, EOS, distinct, KL to round 0, verdict) and the
margin: the smallest junk rise minus the limit, and the limit minus the largest fluent rise. ``--task-checks``: the
gate also applies the demo task's grammar check (``TASK_CHECKS``, as bench/loop_suite.py; its pass rate is
printed). The margin is on the NLL rise alone either way.
The limit (LoopConfig.health_max_nll_rise = +1.0) was fixed from issue 12's figures before this ran.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.ml import demo_task  # noqa: E402
from training.ml.loop import HELD_OUT_ROUND, LoopConfig, health_thresholds, round_prompts, run_loop  # noqa: E402

TASK_CHECKS = {"demo_grammar": demo_task.demo_grammar_check}  # the suite is on the demo task


def loop_cases(optimizer: str, seed: int, workdir: Path, task_checks=None, **overrides) -> list[tuple[str, dict]]:
    config = LoopConfig(optimizer=optimizer, seed=seed, **overrides)
    history = run_loop(config, workdir, utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations(), build_base=demo_task.build_demo_base,
                       log=lambda line: print("   ", line, flush=True), task_checks=task_checks)
    return [(f"{optimizer} seed {seed} round {m['round']}->{m['round'] + 1}" + (" retry" if i else ""), check)
            for m in history for i, check in enumerate(m.get("gate_checks") or [])]


def byte_junk_case(workdir: Path, task_checks=None) -> tuple[str, dict]:
    from training.ml.generation import load_policy
    from training.ml.health import policy_health
    from training.ml.tests.junk import round0_and_junk

    round0_dir, junk_dir = round0_and_junk(workdir)
    prompts = round_prompts(demo_task.make_prompt_pool(), 32, seed=0, round_index=HELD_OUT_ROUND)
    h = policy_health(load_policy(junk_dir), load_policy(round0_dir), prompts, thresholds=health_thresholds(LoopConfig()),
                      task_checks=task_checks)
    return "byte-junk SFT (training/ml/tests/junk.py)", h


def _grammar(h: dict) -> str:
    rates = (h.get("task_checks") or {}).values()  # gate_checks keep the task-check pass rates
    return f"{100 * min(rates):6.1f}%" if rates else f"{'-':>7s}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=["dpo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--junk-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--task-checks", action="store_true", help="gate with the demo grammar check too")
    args = parser.parse_args()
    checks = TASK_CHECKS if args.task_checks else None
    print("gate task checks: " + (", ".join(checks) if checks else "none"), flush=True)
    limit = LoopConfig().health_max_nll_rise
    fluent, junk = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer in args.optimizers:
            for seed in args.seeds:
                started = time.perf_counter()
                fluent += loop_cases(optimizer, seed, Path(tmp) / f"{optimizer}{seed}", checks)
                print(f"  ({optimizer} seed {seed}: {time.perf_counter() - started:.0f} s)", flush=True)
        for seed in args.junk_seeds:
            junk += loop_cases("dpo", seed, Path(tmp) / f"junk{seed}", checks, rounds=1, dpo_learning_rate=0.05)
        junk.append(byte_junk_case(Path(tmp) / "bytejunk", checks))
    print(f"\n{'case':44s} {'NLL rise':>9s} {'EOS':>7s} {'distinct':>9s} {'KL r0':>7s} {'grammar':>7s}  verdict")
    for kind, cases in (("default settings", fluent), ("junk", junk)):
        print(f"-- {kind}")
        for name, h in cases:
            print(f"{name:44s} {h['nll_rise']:+9.2f} {100 * h['eos_rate']:6.1f}% {100 * h['distinct_rate']:8.1f}% "
                  f"{h['kl_to_round0']:7.2f} {_grammar(h)}  {'healthy' if h['healthy'] else 'UNHEALTHY'}  {h['examples'][0]!r}")
    top = max((h["nll_rise"] for _, h in fluent), default=float("nan"))
    bottom = min(h["nll_rise"] for _, h in junk)
    print(f"\nlimit {limit:+.2f}: largest rise under default settings {top:+.2f} (margin {limit - top:.2f}); "
          f"smallest junk rise {bottom:+.2f} (margin {bottom - limit:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
