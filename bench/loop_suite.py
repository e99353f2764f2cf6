"""The in-memory loop on the utility suite (training/ml/utility_suite.py) with one set of defaults (LoopConfig):
utility × seed × optimiser → z, EOS, distinct and NLL rise of the final policy's health check, the gate's
outcomes during the loop, the loop verdict (``loop_verdict``) and wall time.

    .venv/bin/python bench/loop_suite.py --utilities two_clauses says_glowed --seeds 0 --optimizers dpo

Set-aside utilities (``SET_ASIDE``) are marked "*" in the output. Target (issue 12): z > 4 in 3 rounds with a
healthy final policy, for every utility but the collapse-winnable one (marked "c"), whose collapsed policies
the gate must stop.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.ml import demo_task  # noqa: E402
from training.ml.loop import LoopConfig, run_loop  # noqa: E402
from training.ml.monitor import loop_verdict  # noqa: E402
from training.ml.utility_suite import COLLAPSE_WINNABLE, SET_ASIDE, SUITE  # noqa: E402


def one(name: str, seed: int, optimizer: str, workdir: Path, rounds: int) -> str:
    started = time.perf_counter()
    config = LoopConfig(seed=seed, optimizer=optimizer, rounds=rounds)
    history = run_loop(config, workdir, utility=SUITE[name], prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations(), build_base=demo_task.build_demo_base,
                       log=lambda line: None)
    seconds = time.perf_counter() - started
    first, last = history[0], history[-1]
    z = (last["utility_mean"] - first["utility_mean"]) / math.hypot(first["utility_se"], last["utility_se"])
    health = last.get("policy_health") or {}
    gates = ",".join("kept" if m.get("gate_failed") else "retried" if "retried" in (m.get("gate") or "") else "ok"
                     for m in history if m.get("gate"))
    problems = loop_verdict(history)
    mark = ("*" if name in SET_ASIDE else " ") + ("c" if name in COLLAPSE_WINNABLE else " ")
    return (f"{name:16s}{mark} {seed:4d} {optimizer:5s} {first['utility_mean']:+7.3f} {last['utility_mean']:+7.3f} "
            f"{z:+6.1f} {100 * health.get('eos_rate', float('nan')):6.1f}% {100 * health.get('distinct_rate', float('nan')):6.1f}% "
            f"{health.get('nll_rise', float('nan')):+6.2f}  {'healthy' if health.get('healthy') else 'UNHEALTHY':9s} "
            f"{gates:14s} {'pass' if not problems else 'FAIL'} {seconds:6.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utilities", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["dpo", "ppo", "grpo"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'utility':18s} {'seed':>4s} {'opt':5s} {'u(r0)':>7s} {'u(last)':>7s} {'z':>6s} {'EOS':>7s} {'distinct':>7s} "
          f"{'NLL rise':>6s}  {'final':9s} {'gates':14s} loop  wall", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.utilities:
            for seed in args.seeds:
                for optimizer in args.optimizers:
                    print(one(name, seed, optimizer, Path(tmp) / f"{name}-{seed}-{optimizer}", args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
