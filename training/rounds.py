"""Writes of the collect-train loop: start the next round from a policy, record a round's figures, flag
reward over-optimisation.

``round_start`` creates the round (status GENERATING, not yet visible to labelers) with its prompts and a
generation run on the ``gpu`` queue; the run writes the samples and opens the round in one transaction.
One round generates at a time per project. A generation run that ends without samples (cancelled, failed)
leaves its round CLOSED and empty (``training.services``): a round never opens without samples.

The monitor's rules are ``training.ml.monitor``'s (one home with the in-memory loop): every recorded report is
flagged (on the round, and on the run that trained its policy) for reward over-optimisation, the reward-model
score rising while the labelers' measure of the policy fell, else for a fall of the labelers' utility by more
than one standard error; the round also for the health gate (``_health_reasons``). A policy that failed the
gate (``training.health``) cannot start a round without a recorded override.
"""
from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Project, Prompt, Round
from annotation.selectors import user_can_manage
from training.ml.monitor import gate_flag, monitor_flags
from training.models import ModelArtifact, RoundReport, TrainingRun
from training.policy_data import messages_parse

MAX_ROUND_PROMPTS = 10_000
SAMPLING_KEYS = ("k", "temperature", "top_p", "max_new_tokens", "seed", "batch_size", "num_threads")


def round_start(
    *, project: Project, policy_artifact: ModelArtifact, prompts: list, sampling: dict | None = None, user=None,
    health_override: str = "",
) -> TrainingRun:
    """Create round N+1 (GENERATING) with ``prompts`` and queue the generation run that fills and opens it.

    ``prompts``: a list of message lists (or plain strings, one user turn each). ``sampling``: k (must be the
    project's K), temperature, top_p, max_new_tokens, seed, batch_size. Nothing is written on bad input.
    A policy that failed the health gate is refused unless it was overridden, or ``health_override`` gives
    the reason now (recorded on the artifact with ``user``, who must be a researcher of the project).
    """
    from training.health import artifact_health_override, health_refusal
    from training.services import run_create

    if user is not None and not user_can_manage(user=user, project=project):
        raise NotAllowed("Only researchers and admins of this project can start a round.")
    if policy_artifact.project_id != project.id or policy_artifact.kind not in (ModelArtifact.Kind.POLICY,
                                                                                  ModelArtifact.Kind.BASE):
        raise InvalidInput("Choose a policy (or base causal LM) of this project.", location="policy")
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise InvalidInput(f"unknown sampling setting {unknown[0]!r} (known: {', '.join(SAMPLING_KEYS)})",
                           location=f"sampling.{unknown[0]}")
    sampling.setdefault("k", project.k)
    if sampling["k"] != project.k:
        raise InvalidInput(f"k must be the project's K ({project.k}): labelers rank K responses per prompt.",
                           location="sampling.k")
    messages = prompts_validate(prompts)
    refusal = health_refusal(policy_artifact)
    if refusal and not health_override:
        raise InvalidInput(refusal, location="policy")
    with transaction.atomic():
        if refusal:
            policy_artifact = artifact_health_override(artifact=policy_artifact, user=user, reason=health_override)
        Project.objects.select_for_update().get(pk=project.pk)  # one new round number at a time
        _check_none_generating(project=project)
        number = (project.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
        rnd = Round.objects.create(project=project, number=number, status=Round.Status.GENERATING,
                                   source=f"policy {policy_artifact.name} (#{policy_artifact.pk})"[:200],
                                   sampling_params=sampling)
        Prompt.objects.bulk_create([Prompt(project=project, round=rnd, messages=m) for m in messages], batch_size=2000)
        RoundReport.objects.create(round=rnd, policy=policy_artifact)
        return run_create(project=project, kind=TrainingRun.Kind.GENERATE, config=sampling, user=user,
                          base_artifact=policy_artifact, round=rnd)


def _check_none_generating(*, project: Project) -> None:
    """One generating round per project at a time: a second "start next round" (a double submit without an
    idempotency key, or a click while the last round is still generating) is refused, nothing written.
    Called with the project row locked, so two concurrent starts cannot both pass."""
    busy = (TrainingRun.objects.filter(project=project, kind=TrainingRun.Kind.GENERATE,
                                       round__status=Round.Status.GENERATING)
            .exclude(status__in=TrainingRun.TERMINAL).select_related("round").order_by("id").first())
    if busy is not None:
        raise InvalidInput(f"round {busy.round.number} is still generating (run {busy.pk}): wait until it opens, "
                           "or cancel that run, before starting another round", location="round")


def prompts_validate(prompts: list) -> list[list[dict]]:
    if not isinstance(prompts, list) or not prompts:
        raise InvalidInput("give at least one prompt", location="prompts")
    if len(prompts) > MAX_ROUND_PROMPTS:
        raise InvalidInput(f"at most {MAX_ROUND_PROMPTS} prompts per round", location="prompts")
    out = []
    for i, prompt in enumerate(prompts):
        record = {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
        out.append(messages_parse(record, where=f"prompts[{i}]"))
    return out


# ----------------------------------------------------------------------------- figures and flags
def round_report_record(*, round: Round, metrics: dict, policy: ModelArtifact | None = None) -> RoundReport:
    """Merge ``metrics`` into the round's report (created if missing), then re-check the flags. Idempotent."""
    from training.services import json_safe

    with transaction.atomic():
        report, _ = RoundReport.objects.select_for_update().get_or_create(round=round, defaults={"policy": policy})
        report.metrics = {**report.metrics, **json_safe(metrics)}
        if policy is not None:
            report.policy = policy
        report.save()
        flags_update(report=report)
    return report


def _previous_report(report: RoundReport) -> RoundReport | None:
    return (RoundReport.objects.filter(round__project_id=report.round.project_id, round__number__lt=report.round.number,
                                       metrics__has_key="utility_mean")
            .select_related("round").order_by("-round__number").first())


def flags_update(*, report: RoundReport) -> None:
    """Flag the round and the run that trained its policy by the monitor's rules (``monitor_flags``).

    RM evidence (``training.ml.monitor.rm_score_rises``), either: the same reward model scored this round's and
    the previous round's samples (``rm_score_mean`` vs ``rm_score_prev_round``); or the policy's run logged its
    mean RM score per step (``_run_rm_score_change``).
    """
    previous = _previous_report(report)
    if previous is None or "utility_mean" not in report.metrics:
        _flags_write(report=report, run=None, reasons=[], health=_health_reasons(report=report))
        return
    run = report.policy.run if report.policy is not None and report.policy.run_id else None
    current = {**report.metrics, "rm_score_change": _run_rm_score_change(run)}
    _flags_write(report=report, run=run, reasons=monitor_flags(previous.metrics, current),
                 health=_health_reasons(report=report))


def _run_rm_score_change(run: TrainingRun | None) -> float | None:
    """How much the reward model's score rose during a policy run: its summary's ``rm_score_change`` (PPO/GRPO:
    ``training.ml.loop.rm_score_trend``, last quarter of the steps vs the first), else final minus first step;
    None when the run logged no RM score."""
    summary = (run.summary or {}) if run is not None else {}
    if summary.get("rm_score_change") is not None:
        return summary["rm_score_change"]
    first, final = (summary.get("first") or {}).get("rm_score"), (summary.get("final") or {}).get("rm_score")
    return None if first is None or final is None else final - first


def _flags_write(*, report: RoundReport, run, reasons: list[str], health: list[str] = ()) -> None:
    """The round's flag: the monitor's reasons plus the health gate's; the run that trained its policy gets the
    monitor's reasons."""
    reason = "; ".join(r for r in reasons if r)[:500]
    if run is not None:
        TrainingRun.objects.filter(pk=run.pk).update(overoptimised=bool(reason), flag_reason=reason)
    reason = "; ".join(r for r in [*reasons, *health] if r)[:500]
    RoundReport.objects.filter(pk=report.pk).update(overoptimised=bool(reason), flag_reason=reason)
    report.overoptimised, report.flag_reason = bool(reason), reason


def _health_reasons(*, report: RoundReport) -> list[str]:
    """The health gate's part of the round's flag: its policy failed the gate (generating only by a recorded
    override), or the policy trained on it failed the gate twice (``metrics["gate_failed"]``, kept the old one)."""
    reasons = []
    policy = report.policy
    if policy is not None and policy.healthy is False:
        reasons.append(f"generated by policy #{policy.pk}, which failed the health gate ("
                       + "; ".join((policy.health or {}).get("reasons") or []) + ")"
                       + (f", overridden by {policy.health_override_by}: {policy.health_override_reason}"
                          if policy.health_override_at else ""))
    return [*reasons, *filter(None, [gate_flag(report.metrics)])]
