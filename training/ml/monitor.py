"""The loop's monitor (pure, standard library only): the flags a round gets, the loop's verdict, a round's line.

One home for these rules. The loop (``training.ml.loop.loop_rounds``) prints ``format_round`` for every round
and its in-memory steps flag a round with ``round_flags``; on the database ``training.rounds.flags_update``
flags every ``RoundReport`` (the loop's and the browser's rounds) with ``monitor_flags`` and ``gate_flag``;
``run_loop`` and ``bench/loop_suite.py`` judge a finished loop with ``loop_verdict``.

A round's figures are a dict: ``utility_mean``/``utility_se`` (the labelers' utility of its samples), and as
reward-model evidence ``rm_score_change`` (the RM's score trend during the policy run that made the round's
policy, ``training.ml.loop.rm_score_trend``) and ``rm_score_mean``/``rm_score_prev_round`` (one RM's mean score
on this round's and the previous round's samples); ``gate``/``gate_failed`` (the health gate's outcome for
the policy trained on the round).
"""
from __future__ import annotations

import math


def utility_fall(previous: dict, current: dict) -> tuple[float, float] | None:
    """(drop, its standard error) when the labelers' mean utility fell from ``previous`` to ``current`` by more
    than one standard error of the difference, sqrt(se₀² + se₁²) (a missing se counts 0); else None.

    >>> utility_fall({"utility_mean": 0.5, "utility_se": 0.05}, {"utility_mean": 0.3, "utility_se": 0.05})
    (0.2, 0.07071067811865475)
    >>> utility_fall({"utility_mean": 0.5, "utility_se": 0.05}, {"utility_mean": 0.45, "utility_se": 0.05}) is None
    True
    """
    before, after = previous.get("utility_mean"), current.get("utility_mean")
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    se = math.hypot(previous.get("utility_se") or 0.0, current.get("utility_se") or 0.0)
    drop = before - after
    return (drop, se) if drop > se else None


def rm_score_rises(current: dict) -> list[tuple[str, float]]:
    """The reward model's evidence in a round's figures: (where its score was compared, how much it rose)."""
    evidence = []
    before, after = current.get("rm_score_prev_round"), current.get("rm_score_mean")
    if before is not None and after is not None:
        evidence.append(("on this round's samples over the previous round's", after - before))
    if current.get("rm_score_change") is not None:
        evidence.append(("during the policy run", current["rm_score_change"]))
    return [(where, rise) for where, rise in evidence if math.isfinite(rise)]


def monitor_flags(previous: dict | None, current: dict) -> list[str]:
    """The monitor's reasons to flag a round (empty: not flagged). Reward over-optimisation: the reward model's
    score rose (by any of its evidence) while the labelers' utility fell by more than one standard error; else
    the labelers' utility fell by that much, whatever the reward model says.

    >>> before, after = {"utility_mean": 0.6, "utility_se": 0.02}, {"utility_mean": 0.3, "utility_se": 0.02}
    >>> print(*monitor_flags(before, {**after, "rm_score_change": 0.4}))  # doctest: +NORMALIZE_WHITESPACE
    reward-model score rose by 0.400 during the policy run while the labelers' utility fell by 0.300 (more than its
    standard error 0.028)
    >>> monitor_flags({"utility_mean": 0.6}, {"utility_mean": 0.3, "rm_score_change": -0.2})
    ["labelers' utility fell by 0.300 (more than its standard error 0.000)"]
    """
    fall = utility_fall(previous, current) if previous is not None else None
    if fall is None:
        return []
    drop, se = fall
    over = [f"reward-model score rose by {rise:.3f} {where} while the labelers' utility fell by {drop:.3f} "
            f"(more than its standard error {se:.3f})" for where, rise in rm_score_rises(current) if rise > 0]
    return over or [f"labelers' utility fell by {drop:.3f} (more than its standard error {se:.3f})"]


def gate_flag(current: dict) -> str | None:
    """The health gate's reason to flag a round: the policy trained on it failed twice (the old one was kept)."""
    if current.get("gate_failed"):
        return "the policy trained on this round failed the health gate: " + str(current.get("gate", ""))
    return None


def round_flags(previous: dict | None, current: dict) -> list[str]:
    """All the loop's reasons to flag a round: the monitor's, then the gate's."""
    return [*monitor_flags(previous, current), *filter(None, [gate_flag(current)])]


def loop_verdict(history: list[dict]) -> list[str]:
    """Why a finished loop failed (empty: it passed): the final policy is unhealthy, or the labelers' utility
    did not rise by more than one standard error of the difference between round 0 and the last round."""
    first, last = history[0], history[-1]
    problems = []
    health = last.get("policy_health") or {}
    if health.get("healthy") is False:
        problems.append("the final policy is unhealthy: " + "; ".join(health.get("reasons") or []))
    se = math.hypot(first["utility_se"], last["utility_se"])
    gain = last["utility_mean"] - first["utility_mean"]
    if not gain > se:
        problems.append(f"the utility did not rise: {gain:+.3f} (standard error {se:.3f})")
    return problems


def format_round(m: dict) -> str:
    """A round's line: its figures ("  -  " where one is missing), the monitor's changes, the gate, the flags."""
    def fmt(key: str, spec: str, scale: float = 1.0) -> str:
        return "  -  " if m.get(key) is None else format(m[key] * scale, spec)

    number = f" (#{m['round_number']})" if "round_number" in m else ""
    line = (f"[{m.get('elapsed_s', 0.0):6.1f}s] round {m['round']}{number}: utility {m['utility_mean']:+.3f} ± "
            f"{m['utility_se']:.3f} | RM acc {fmt('rm_accuracy', '.3f')} | KL to r0 {m['kl_to_round0']:.3f} | EOS "
            f"{fmt('eos_rate', '.1f', 100)}% | distinct {100 * m['distinct_rate']:.1f}% | NLL@r0 {m['nll_round0']:.3f}"
            f" | tokens {m['mean_tokens']:.1f}")
    if "rm_score_change" in m and "utility_change" in m:
        line += f" | RM score Δ {m['rm_score_change']:+.3f}, utility Δ {m['utility_change']:+.3f}"
    health = m.get("policy_health") or {}
    if health.get("healthy") is not None:
        line += f" | health {'ok' if health['healthy'] else 'FAILED'}"
        line += f" (NLL rise {health['nll_rise']:+.2f})" if health.get("nll_rise") is not None else ""
    if m.get("gate") and m["gate"] != "passed":
        line += f"\n  GATE: {m['gate']}"
    return line + "".join(f"\n  FLAG: {flag}" for flag in m.get("flags") or [])
