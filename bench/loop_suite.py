"""The in-memory loop on the utility suite (training/ml/utility_suite.py) with one set of defaults (LoopConfig):
utility × seed × optimiser → z, EOS, distinct and NLL rise of the final policy's health check, the gate's
outcomes during the loop, the loop verdict (``loop_verdict``) and wall time.

    .venv/bin/python bench/loop_suite.py --utilities two_clauses says_glowed --seeds 0 --optimizers dpo
    .venv/bin/python bench/loop_suite.py --utilities two_clauses --seeds 1 2 --optimizers dpo \
        --set dpo_rpo_alpha=1.0 --set dpo_reference=round0 --jsonl sweep.jsonl

``--set KEY=VALUE`` overrides a LoopConfig field for every run (repeatable); ``--jsonl`` appends one JSON line
per run (the settings, every round's figures, z, verdict, wall time) for sweeps; ``--summarise FILE …`` prints,
per file, the figures of the selection rule in docs/loop.md (healthy final policies, wall time, minimum z).

Set-aside utilities (``SET_ASIDE``) are marked "*" in the output. Target (issue 12): z > 4 in 3 rounds with a
healthy final policy, for every utility but the collapse-winnable one (marked "c"), whose collapsed policies
the gate must stop.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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

# The suite is on the demo task: --task-checks gates with the demo task's grammar check too (opt-in: with its
# fixed 90% floor it rejected policies about as grammatical as round 0 itself; docs/loop.md).
TASK_CHECKS = {"demo_grammar": demo_task.demo_grammar_check}


def parse_overrides(items: list[str]) -> dict:
    """``["dpo_beta=0.2", "dpo_reference=round0"]`` -> LoopConfig overrides, each value of its field's type."""
    fields = {f.name: f for f in dataclasses.fields(LoopConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or key in ("seed", "optimizer", "rounds"):
            raise SystemExit(f"--set {item}: not a LoopConfig field this bench lets you set")
        kind = type(fields[key].default)
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items() if k != "examples"}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def one(name: str, seed: int, optimizer: str, workdir: Path, rounds: int, overrides: dict | None = None,
        jsonl: str | None = None, task_checks: bool = False) -> str:
    started = time.perf_counter()
    config = LoopConfig(seed=seed, optimizer=optimizer, rounds=rounds, **(overrides or {}))
    history = run_loop(config, workdir, utility=SUITE[name], prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations(), build_base=demo_task.build_demo_base,
                       log=lambda line: None, task_checks=TASK_CHECKS if task_checks else None)
    seconds = time.perf_counter() - started
    first, last = history[0], history[-1]
    z = (last["utility_mean"] - first["utility_mean"]) / math.hypot(first["utility_se"], last["utility_se"])
    health = last.get("policy_health") or {}
    gates = ",".join("kept" if m.get("gate_failed") else "retried" if "retried" in (m.get("gate") or "") else "ok"
                     for m in history if m.get("gate"))
    problems = loop_verdict(history)
    rates = (health.get("task_checks") or {}).values()  # the final policy's task-check pass rates (none: "-")
    task = f"{100 * min(rates):6.1f}%" if rates else f"{'-':>7s}"
    mark = ("*" if name in SET_ASIDE else " ") + ("c" if name in COLLAPSE_WINNABLE else " ")
    if jsonl:
        record = {"utility": name, "seed": seed, "optimizer": optimizer, "overrides": overrides or {},
                  "task_checks": sorted(TASK_CHECKS) if task_checks else [],
                  "set_aside": name in SET_ASIDE, "collapse_winnable": name in COLLAPSE_WINNABLE, "z": z,
                  "final_healthy": bool(health.get("healthy")), "gates": gates, "verdict": problems,
                  "wall_s": seconds, "history": history}
        with open(jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")
    return (f"{name:16s}{mark} {seed:4d} {optimizer:5s} {first['utility_mean']:+7.3f} {last['utility_mean']:+7.3f} "
            f"{z:+6.1f} {100 * health.get('eos_rate', float('nan')):6.1f}% {100 * health.get('distinct_rate', float('nan')):6.1f}% "
            f"{health.get('nll_rise', float('nan')):+6.2f} {task}  {'healthy' if health.get('healthy') else 'UNHEALTHY':9s} "
            f"{gates:14s} {'pass' if not problems else 'FAIL'} {seconds:6.0f}s")


def summarise(paths: list[str]) -> None:
    """One line per --jsonl file: runs, final policies healthy, max wall time, and the selection rule's score
    (the minimum z over the non-collapse-winnable runs) with the utility and seed where it is reached."""
    print(f"{'sweep file':28s} {'runs':>4s} {'healthy':>7s} {'max wall':>8s} {'min z':>6s}  at")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            runs = [json.loads(line) for line in f if line.strip()]
        scored = [r for r in runs if not r["collapse_winnable"]]
        worst = min(scored, key=lambda r: r["z"]) if scored else None
        healthy = sum(r["final_healthy"] for r in runs)
        wall = max(r["wall_s"] for r in runs)
        print(f"{Path(path).name:28s} {len(runs):4d} {healthy:4d}/{len(runs):<2d} {wall:7.0f}s "
              + (f"{worst['z']:+6.1f}  {worst['utility']} seed {worst['seed']}" if worst else "     -"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utilities", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["dpo", "ppo", "grpo"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a LoopConfig field for every run (repeatable)")
    parser.add_argument("--jsonl", help="append one JSON line per run to this file")
    parser.add_argument("--task-checks", action="store_true",
                        help="gate with the demo task's grammar check too (demo_grammar: >= 90%% of replies parse)")
    parser.add_argument("--summarise", nargs="+", metavar="JSONL", help="summarise --jsonl files and exit")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return 0
    overrides = parse_overrides(args.set)
    print("gate task checks: " + (", ".join(TASK_CHECKS) if args.task_checks else "none"), flush=True)
    if overrides:
        print("overrides: " + " ".join(f"{k}={v}" for k, v in overrides.items()), flush=True)
    print(f"{'utility':18s} {'seed':>4s} {'opt':5s} {'u(r0)':>7s} {'u(last)':>7s} {'z':>6s} {'EOS':>7s} {'distinct':>7s} "
          f"{'NLL rise':>6s} {'grammar':>7s}  {'final':9s} {'gates':14s} loop  wall", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.utilities:
            for seed in args.seeds:
                for optimizer in args.optimizers:
                    print(one(name, seed, optimizer, Path(tmp) / f"{name}-{seed}-{optimizer}", args.rounds,
                              overrides, args.jsonl, args.task_checks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
