"""The health gate: is a trained policy fit to generate the next round for the labelers?

``policy_health`` samples the policy on held-out prompts (temperature 1, top-p 1, no redraw of duplicates,
so the figures describe the policy itself) and measures:

- EOS rate: share of replies that ended with EOS within ``max_new_tokens``;
- distinct rate: share of distinct replies among the ``samples_per_prompt`` of each prompt;
- NLL rise: per-token NLL of the replies under round 0's policy, minus that of round 0's own replies to the
  same prompts (fluent rewrites the labelers wanted rose +0.22…+0.60 nats/token in issue 12, byte junk
  +2.5…+4.2; the default limit +1.0 sits between, margins measured in docs/loop.md);
- KL to round 0 and to the run's own reference (``generation.token_kl``, ≥ 0), reported, limits optional;
- task checks: operator-registered callables ``check(prompt_messages, reply) -> bool``; the share of
  replies passing each is compared with round 0's share on the same prompts (same sampling, same seed): a check
  fails only when the policy's share is below both the absolute floor ``min_task_pass_rate`` and round 0's share
  by more than ``task_check_z`` standard errors of the difference (``task_check_reason``). Without round 0's
  share (round 0 is the policy itself, or a baseline without it) the absolute floor alone applies.

A policy is healthy when every check passes; ``reasons`` says which failed and by how much. No Django here.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import torch

from training.ml.generation import generate_samples, mean_token_nll, sample_token_ids, token_kl

TaskCheck = Callable[[list[dict], str], bool]


MAX_TASK_CHECK_Z = 10.0  # beyond this the comparison with round 0 would pass any policy: refused


def _is_number(value) -> bool:
    """A finite int or float (not a bool, a string or NaN): what a threshold may be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class HealthThresholds:
    min_eos_rate: float = 0.95
    min_distinct_rate: float = 0.90
    max_nll_rise: float = 1.0  # nats/token above round 0's own replies, under round 0's policy
    max_kl_to_round0: float | None = None  # nats per reply; None: reported, not gated
    max_kl_to_reference: float | None = None
    min_task_pass_rate: float = 0.90  # absolute floor; a check under it fails only if also below round 0's share
    task_check_z: float = 3.0  # ... by more than this many standard errors of the difference (see task_check_reason)
    prompts: int = 32  # held-out prompts sampled
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    seed: int = 777_001  # sampling seed of the check (not a round's seed)

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "HealthThresholds":
        """Thresholds from stored settings; unknown keys are an error (a typo must not disable a check)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown health setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        out = cls(**values)
        for name in ("min_eos_rate", "min_distinct_rate", "min_task_pass_rate"):
            if not _is_number(getattr(out, name)) or not 0.0 <= getattr(out, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not _is_number(out.task_check_z) or not 0.0 <= out.task_check_z <= MAX_TASK_CHECK_Z:
            raise ValueError(f"task_check_z must be a number of standard errors between 0 and {MAX_TASK_CHECK_Z:g} "
                             f"(got {out.task_check_z!r})")
        if out.prompts < 1 or out.samples_per_prompt < 2 or out.max_new_tokens < 1:
            raise ValueError("prompts ≥ 1, samples_per_prompt ≥ 2 and max_new_tokens ≥ 1 are needed")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _named(task_checks) -> dict[str, TaskCheck]:
    if not task_checks:
        return {}
    if isinstance(task_checks, Mapping):
        return dict(task_checks)
    return {getattr(check, "__name__", f"check{i}"): check for i, check in enumerate(task_checks)}


def _replies(model, tokenizer, prompts, t: HealthThresholds):
    with torch.random.fork_rng(devices=[]):  # the check's own seed; the caller's random stream is left as it was
        samples = generate_samples("", prompts, k=t.samples_per_prompt, max_new_tokens=t.max_new_tokens, seed=t.seed,
                                   max_attempts=1, model=model, tokenizer=tokenizer)
    flat_prompts = [m for m, group in zip(prompts, samples) for _ in group]
    return samples, flat_prompts, [s for group in samples for s in group]


def _below(value: float | None, floor: float) -> bool:
    return value is not None and value < floor


def pass_rate_se(rate: float, n: int, rate0: float, n0: int) -> float:
    """Standard error of the difference between two independent sample shares: the policy's ``rate`` of ``n``
    replies and round 0's ``rate0`` of ``n0``: sqrt(p0(1−p0)/n0 + p(1−p)/n)."""
    return math.sqrt(rate0 * (1 - rate0) / n0 + rate * (1 - rate) / n)


def task_check_reason(name: str, rate: float, n: int | None, t: HealthThresholds, rate0: float | None = None,
                      n0: int | None = None) -> str | None:
    """Why task check ``name`` fails (None: it passes). It passes when the policy's share ``rate`` (of ``n``
    replies) reaches the absolute floor ``min_task_pass_rate``, or is not below round 0's share ``rate0`` (of
    ``n0`` replies, the same prompts and sampling) by more than ``task_check_z`` standard errors of the
    difference: rate ≥ floor or rate ≥ rate0 − z·SE. Round 0's share unknown: the floor alone."""
    floor = t.min_task_pass_rate
    if rate >= floor:
        return None
    if rate0 is None or not n or not n0:
        return f"task check {name}: {100 * rate:.1f}% of replies pass < {100 * floor:.0f}%"
    se = pass_rate_se(rate, n, rate0, n0)
    if rate >= rate0 - t.task_check_z * se:
        return None
    z = f"{t.task_check_z:.1f}" if round(t.task_check_z, 1) == t.task_check_z else f"{t.task_check_z:g}"
    gap = f"by {(rate0 - rate) / se:.1f} SE (> {z})" if se > 0 else "(no sampling spread)"
    return (f"task check {name}: {100 * rate:.1f}% of replies pass, below round 0's {100 * rate0:.1f}% {gap} "
            f"and below the {100 * floor:.0f}% floor")


def health_verdict(figures: Mapping, t: HealthThresholds) -> list[str]:
    """The reasons a policy with these figures is unhealthy (empty: healthy)."""
    reasons = []
    # A floor that round 0 itself does not reach (e.g. an untrained base that never ends its replies) says
    # nothing about this policy: it is reported (``*_round0``) but not gated; the NLL rise still is.
    if figures["eos_rate"] < t.min_eos_rate and not _below(figures.get("eos_rate_round0"), t.min_eos_rate):
        reasons.append(f"EOS rate {100 * figures['eos_rate']:.1f}% < {100 * t.min_eos_rate:.0f}%")
    if (figures["distinct_rate"] < t.min_distinct_rate
            and not _below(figures.get("distinct_rate_round0"), t.min_distinct_rate)):
        reasons.append(f"distinct replies {100 * figures['distinct_rate']:.1f}% < {100 * t.min_distinct_rate:.0f}%")
    if figures["nll_rise"] > t.max_nll_rise:
        reasons.append(f"NLL under round 0 rose {figures['nll_rise']:+.2f} nats/token > {t.max_nll_rise:+.2f}")
    for key, limit in (("kl_to_round0", t.max_kl_to_round0), ("kl_to_reference", t.max_kl_to_reference)):
        if limit is not None and figures.get(key) is not None and figures[key] > limit:
            reasons.append(f"{key.replace('_', ' ')} {figures[key]:.2f} nats > {limit:.2f}")
    round0_rates = figures.get("task_checks_round0") or {}
    for name, rate in (figures.get("task_checks") or {}).items():
        reason = task_check_reason(name, rate, figures.get("replies"), t, round0_rates.get(name),
                                   figures.get("replies_round0"))
        if reason:
            reasons.append(reason)
    return reasons


def _pass_rates(task_checks, flat_prompts, texts) -> dict[str, float]:
    return {name: statistics.fmean(bool(check(m, x)) for m, x in zip(flat_prompts, texts))
            for name, check in _named(task_checks).items()}


def round0_baseline(round0, prompts: Sequence[list[dict]], thresholds: HealthThresholds | None = None,
                    task_checks: Mapping[str, TaskCheck] | Sequence[TaskCheck] | None = None) -> dict:
    """Round 0's own replies to the check's prompts: their NLL under round 0, round 0's EOS and distinct rates,
    and the share of them passing each task check (``task_checks_round0``, of ``replies_round0`` replies).
    Computed once, it serves every check of other policies on the same prompts, thresholds and task checks."""
    t = thresholds or HealthThresholds()
    model0, tokenizer0 = round0
    samples0, p0, flat0 = _replies(model0, tokenizer0, list(prompts)[: t.prompts], t)
    texts0 = [s.text for s in flat0]
    return {"nll_round0_baseline": mean_token_nll(model0, tokenizer0, p0, texts0),
            "eos_rate_round0": statistics.fmean(s.ended_with_eos for s in flat0),
            "distinct_rate_round0": sum(len({s.text for s in g}) for g in samples0) / len(flat0),
            "task_checks_round0": _pass_rates(task_checks, p0, texts0), "replies_round0": len(flat0)}


def policy_health(policy, round0, prompts: Sequence[list[dict]], *, thresholds: HealthThresholds | None = None,
                  reference=None, task_checks: Mapping[str, TaskCheck] | Sequence[TaskCheck] | None = None,
                  round0_nll: float | None = None, baseline: Mapping | None = None) -> dict:
    """Check a policy on held-out ``prompts``; returns figures, ``healthy`` and ``reasons``.

    ``policy``, ``round0`` and ``reference`` (the policy the run started from; None: not measured) are
    (model, tokenizer) pairs sharing one tokenizer. ``baseline``: ``round0_baseline`` of the same prompts,
    thresholds and task checks, when known (a baseline may hold only some keys: a rate it lacks is not known);
    ``round0_nll``: round 0's own replies' NLL alone (its rates then not known, so its floors apply as set);
    with neither, round 0 is sampled on the same prompts with the same seed. When ``round0`` is the policy
    itself (no round 0 in the lineage), round 0's task-check shares are not used: a policy compared with itself
    would always pass, so its task checks meet the absolute floor alone."""
    t = thresholds or HealthThresholds()
    prompts = list(prompts)[: t.prompts]
    if not prompts:
        raise ValueError("the health check needs at least one held-out prompt")
    (model, tokenizer), (model0, tokenizer0) = policy, round0
    samples, flat_prompts, flat = _replies(model, tokenizer, prompts, t)
    texts = [s.text for s in flat]
    if baseline is None and round0_nll is not None:
        baseline = {"nll_round0_baseline": round0_nll}
    baseline = baseline or round0_baseline(round0, prompts, t, task_checks)
    round0_nll = baseline["nll_round0_baseline"]
    round0_rates = {k: v for k, v in baseline.items() if k not in ("nll_round0_baseline", "task_checks_round0")}
    checks = _named(task_checks)
    own_round0 = round0 is policy or model0 is model  # the policy is its own round 0: nothing to compare with
    known0 = {} if own_round0 else (baseline.get("task_checks_round0") or {})
    nll = mean_token_nll(model0, tokenizer0, flat_prompts, texts)
    ids = [sample_token_ids(tokenizer, s) for s in flat]
    same_vocab = tokenizer.get_vocab() == tokenizer0.get_vocab()  # else KL is not defined token by token
    kl0 = token_kl(model, model0, tokenizer, flat_prompts, ids).tolist() if same_vocab else [float("nan")]
    figures = {
        "eos_rate": statistics.fmean(s.ended_with_eos for s in flat),
        "distinct_rate": sum(len({s.text for s in group}) for group in samples) / len(flat),
        "nll_round0": nll, "nll_round0_baseline": round0_nll, "nll_rise": nll - round0_nll, **round0_rates,
        "kl_to_round0": statistics.fmean(kl0),
        "kl_to_round0_se": statistics.stdev(kl0) / len(kl0) ** 0.5 if len(kl0) > 1 else 0.0,
        "kl_to_reference": None,
        "mean_tokens": statistics.fmean(s.num_tokens for s in flat),
        "task_checks": _pass_rates(checks, flat_prompts, texts),
        "task_checks_round0": {name: known0[name] for name in checks if known0.get(name) is not None},
        "prompts": len(prompts), "replies": len(flat), "examples": texts[:3],
    }
    if not same_vocab:  # round 0 has another tokenizer: no KL; the NLL is still measured, on the text
        figures["kl_to_round0"] = figures["kl_to_round0_se"] = None
    if reference is not None and reference[1].get_vocab() == tokenizer.get_vocab():
        figures["kl_to_reference"] = statistics.fmean(token_kl(model, reference[0], tokenizer, flat_prompts, ids).tolist())
    reasons = health_verdict(figures, t)
    return {**figures, "healthy": not reasons, "reasons": reasons, "thresholds": t.to_dict()}


def format_task_checks(h: Mapping) -> str:
    """The task checks' pass rates, each with round 0's beside it: "demo_grammar 82.0% (round 0 93.8%)"
    ("round 0 —" when round 0's share was not measured); "" without task checks."""
    round0 = h.get("task_checks_round0") or {}
    return ", ".join(f"{name} {100 * rate:.1f}% (round 0 "
                     + ("—" if round0.get(name) is None else f"{100 * round0[name]:.1f}%") + ")"
                     for name, rate in (h.get("task_checks") or {}).items())


def format_health(h: Mapping) -> str:
    """One line: verdict and figures (what the CLI prints and the pages show)."""
    verdict = "HEALTHY" if h.get("healthy") else "UNHEALTHY: " + "; ".join(h.get("reasons") or [])
    kl_ref = h.get("kl_to_reference")
    tasks = format_task_checks(h)
    return (f"health {verdict} | EOS {100 * h['eos_rate']:.1f}% | distinct {100 * h['distinct_rate']:.1f}% | "
            f"NLL@r0 rise {h['nll_rise']:+.2f}"
            + ("" if h.get("kl_to_round0") is None else f" | KL to r0 {h['kl_to_round0']:.2f}")
            + ("" if kl_ref is None else f" | KL to ref {kl_ref:.2f}")
            + ("" if not tasks else f" | task checks {tasks}"))
