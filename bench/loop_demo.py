"""The demo loop, headless and in memory: SFT a tiny policy, then 3 rounds of generate -> rank -> reward
model -> DPO, PPO or GRPO.

    .venv/bin/python bench/loop_demo.py --seeds 0 1 2                      # DPO (issue 4)
    .venv/bin/python bench/loop_demo.py --optimizer ppo --seeds 0 1 2      # PPO (issue 5)
    .venv/bin/python bench/loop_demo.py --optimizer grpo --seeds 0 1 2     # GRPO (issue 5)

Checks the target for each seed with the default LoopConfig: round 3's mean utility beats round 0's by more
than 4 standard errors (of the difference), and at round 3 ≥ 95% of samples end with EOS, ≥ 90% are
distinct and the per-token NLL under round 0's policy rose by ≤ 0.3 nats; all within 5 minutes (DPO,
issue 4) or 10 minutes (PPO/GRPO, issue 5) per seed, SFT included. Rounds the monitor (training.ml.monitor)
flags are printed. Exits 1 if any seed misses.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.ml import demo_task  # noqa: E402
from training.ml.loop import LoopConfig, run_loop  # noqa: E402


TIME_LIMIT_S = {"dpo": 300, "ppo": 600, "grpo": 600}


def check(history: list[dict], seconds: float, limit_s: float = 300) -> tuple[bool, str]:
    first, last = history[0], history[-1]
    z = (last["utility_mean"] - first["utility_mean"]) / math.hypot(first["utility_se"], last["utility_se"])
    nll_rise = last["nll_round0"] - first["nll_round0"]
    ok = {
        "z > 4": z > 4,
        "EOS ≥ 95%": last["eos_rate"] >= 0.95,
        "distinct ≥ 90%": last["distinct_rate"] >= 0.90,
        "NLL rise ≤ 0.3": nll_rise <= 0.3,
        f"time ≤ {limit_s:.0f} s": seconds <= limit_s,
    }
    text = (f"utility {first['utility_mean']:+.3f} -> {last['utility_mean']:+.3f}, z = {z:.1f}; "
            f"EOS {100 * last['eos_rate']:.1f}%, distinct {100 * last['distinct_rate']:.1f}%, "
            f"NLL rise {nll_rise:+.3f}; {seconds:.0f} s; " + ", ".join(f"{k}: {'ok' if v else 'MISS'}" for k, v in ok.items()))
    return all(ok.values()), text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", default="", help="where models go (default: a temporary directory)")
    for f in fields(LoopConfig):
        if f.name != "seed":
            kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args()
    overrides = {f.name: getattr(args, f.name) for f in fields(LoopConfig) if getattr(args, f.name, None) is not None}
    results = []
    for seed in args.seeds:
        config = LoopConfig(seed=seed, **{k: v for k, v in overrides.items() if k != "seed"})
        print(f"== seed {seed}: {config}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"loop-{seed}-", dir=args.workdir or None) as workdir:
            started = time.perf_counter()
            history = run_loop(
                config, Path(workdir), utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                demonstrations=demo_task.load_demonstrations(), build_base=demo_task.build_demo_base,
                log=lambda line: print(line, flush=True),
            )
            ok, text = check(history, time.perf_counter() - started, TIME_LIMIT_S[config.optimizer])
        flagged = [m["round"] for m in history if m.get("flags")]
        print(f"seed {seed}: {'PASS' if ok else 'FAIL'}: {text}; monitor flagged rounds: "
              f"{flagged or 'none'}", flush=True)
        results.append(ok)
    print(f"{sum(results)}/{len(results)} seeds pass")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
