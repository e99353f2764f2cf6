"""The health gate on the database: per-project thresholds, task checks by name, the check every policy run
makes before its artifact is registered, and the recorded override that lets an unhealthy policy generate.

The measuring is ``training.ml.health.policy_health`` (pure). Here: which policy is round 0 (the oldest
POLICY ancestor of the run's base), which is the run's own reference (its base, when a policy), which
held-out prompts (a fixed-seed sample of the project's pool, else its demonstrations' prompts), and which
thresholds and task checks (``HealthSettings``; names resolved by ``task_checks_resolve``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Project
from annotation.selectors import user_can_manage
from training.models import HealthSettings, ModelArtifact, TrainingRun

if TYPE_CHECKING:
    from training.ml.health import HealthThresholds

HELD_OUT_SEED = 777_001  # the gate's prompt sample: not a round's seed (rounds use seed·1000 + r)


# ----------------------------------------------------------------------------- settings and task checks
def task_checks_resolve(names: list[str]) -> dict:
    """Task-check callables by name, through the operator's hook registry (``annotation.hooks``, kind
    ``task_check``): a name that is not registered is refused, never imported."""
    from annotation.hooks import hook_resolve

    if not isinstance(names, list):
        raise InvalidInput("task checks must be a list of registered names", location="task_checks")
    return {name: hook_resolve(kind="task_check", name=name, location="task_checks") for name in names}


def health_settings_get(*, project: Project) -> tuple:
    """(HealthThresholds, task check names) of a project; defaults when it has none stored."""
    from training.ml.health import HealthThresholds

    row = HealthSettings.objects.filter(project=project).first()
    if row is None:
        return HealthThresholds(), []
    return HealthThresholds.from_dict(row.thresholds), list(row.task_checks)


def health_thresholds_validate(thresholds) -> HealthThresholds:
    """The ``HealthThresholds`` a stored settings dict gives, or ``InvalidInput`` (location ``thresholds``) saying
    which value is wrong: unknown keys, rates outside 0…1, a ``task_check_z`` that is not a number of standard
    errors between 0 and ``MAX_TASK_CHECK_Z`` (strings, NaN, infinities and booleans are refused)."""
    from training.ml.health import HealthThresholds

    if not isinstance(thresholds, dict):
        raise InvalidInput("health thresholds must be an object of HealthThresholds fields", location="thresholds")
    try:
        return HealthThresholds.from_dict(thresholds)
    except (TypeError, ValueError) as error:
        raise InvalidInput(str(error), location="thresholds") from error


@transaction.atomic
def health_settings_update(*, project: Project, thresholds: dict, task_checks: list[str] | None = None,
                           user=None) -> HealthSettings:
    """Store a project's gate thresholds (``HealthThresholds`` fields) and task checks; validated first."""
    if user is not None and not user_can_manage(user=user, project=project):
        raise NotAllowed("Only researchers and admins of this project can change its health gate.")
    health_thresholds_validate(thresholds)
    task_checks_resolve(list(task_checks or []))
    row, _ = HealthSettings.objects.select_for_update().get_or_create(project=project)
    row.thresholds, row.task_checks = dict(thresholds), list(task_checks or [])
    row.save()
    return row


# ----------------------------------------------------------------------------- the check, in a policy job
def round0_artifact(*, start: ModelArtifact | None) -> ModelArtifact | None:
    """The oldest POLICY in ``start``'s lineage (``start`` included): round 0's policy."""
    oldest, seen = None, set()
    while start is not None and start.pk not in seen:
        seen.add(start.pk)
        if start.kind == ModelArtifact.Kind.POLICY:
            oldest = start
        start = start.parent
    return oldest


def held_out_prompts(*, project: Project, n: int) -> list[list[dict]]:
    from training.policy_data import pool_prompts_sample

    if project.pool_prompts.exists():
        return pool_prompts_sample(project=project, n=n, seed=HELD_OUT_SEED)
    return list(project.demonstrations.order_by("id").values_list("messages", flat=True)[:n]) or \
        list(project.prompts.order_by("id").values_list("messages", flat=True)[:n])


def _lineage_policies(run: TrainingRun):
    """(round 0's artifact, round 0 as (model, tokenizer) or None, the run's reference or None), as the gate
    takes them: round 0 is the oldest POLICY of the base's lineage, the reference the base when a policy.
    One load when they are the same artifact."""
    from training.selectors import policy_load

    base = run.base_artifact
    round0_row = round0_artifact(start=base)
    round0 = policy_load(round0_row) if round0_row is not None else None
    if base is None or base.kind != ModelArtifact.Kind.POLICY:
        return round0_row, round0, None
    return round0_row, round0, round0 if base.pk == round0_row.pk else policy_load(base)


def policy_health_check(*, run: TrainingRun, policy_dir, log=print) -> dict:
    """The gate's verdict and figures for the policy a run just trained (before it is registered)."""
    from training.ml.generation import load_policy
    from training.ml.health import format_health, policy_health

    thresholds, names = health_settings_get(project=run.project)
    prompts = held_out_prompts(project=run.project, n=thresholds.prompts)
    if not prompts:
        return {"healthy": None, "reasons": ["no held-out prompts: the gate did not run"]}
    policy = load_policy(policy_dir)
    round0_row, round0, reference = _lineage_policies(run)
    health = policy_health(policy, round0 or policy, prompts, thresholds=thresholds, reference=reference,
                           task_checks=task_checks_resolve(names))
    health["round0_artifact"] = round0_row.pk if round0_row is not None else None
    log(format_health(health))
    return health


def health_watch_for(*, run: TrainingRun, config):
    """What a policy run's in-run check needs (``training.ml.health_watch.HealthWatch``): the gate's held-out
    prompts, thresholds and task checks, round 0 and the reference; None when ``config.health_every`` is 0, the
    project has no held-out prompts, or in a process other than a data-parallel run's main one (which checks)."""
    from training.ml.distributed import process_rank
    from training.ml.health_watch import HealthWatch

    if not getattr(config, "health_every", 0) or process_rank() != 0:
        return None
    thresholds, names = health_settings_get(project=run.project)
    prompts = held_out_prompts(project=run.project, n=thresholds.prompts)  # the watch takes the first few
    if not prompts:
        return None
    _, round0, reference = _lineage_policies(run)
    return HealthWatch(prompts=prompts, thresholds=thresholds, round0=round0, reference=reference,
                       task_checks=task_checks_resolve(names))


def policy_gate(*, run: TrainingRun, policy_dir, summary: dict, log=print) -> Path:
    """The policy directory a finished policy run registers, through the gate. The final policy's verdict goes
    in ``summary["health"]``; when it fails and the in-run checks kept a healthy policy (``health_watch`` in the
    summary) that passes the gate too, that one is registered instead: ``summary["health"]`` is then its
    verdict and ``summary["health_kept"]`` says which step was kept and why (the final policy's reasons)."""
    summary["health"] = final = policy_health_check(run=run, policy_dir=policy_dir, log=log)
    watch = summary.get("health_watch") or {}
    if final.get("healthy") is not False or watch.get("kept_step") is None:
        return Path(policy_dir)
    step, kept_dir = watch["kept_step"], Path(watch["kept_dir"])
    log(f"the final policy failed the gate; checking the policy kept at step {step}")
    kept = policy_health_check(run=run, policy_dir=kept_dir, log=log)
    if not kept.get("healthy"):
        watch["kept_failed_gate"] = kept.get("reasons")
        log(f"the policy kept at step {step} fails the gate too: the final policy is registered")
        return Path(policy_dir)
    reasons = "; ".join(final.get("reasons") or [])
    note = f"kept step {step}: final policy failed ({reasons})"
    summary["health"] = kept
    summary["health_kept"] = {"step": step, "final_reasons": final.get("reasons") or [], "final_health": final,
                              "note": note}
    log(note)
    return kept_dir


# ----------------------------------------------------------------------------- the override
def artifact_health_override(*, artifact: ModelArtifact, user, reason: str) -> ModelArtifact:
    """Let an unhealthy policy generate rounds: recorded with who and why (a researcher of its project)."""
    if user is None or not user_can_manage(user=user, project=artifact.project):
        raise NotAllowed("Only researchers and admins of this project can override the health gate.")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("say why the unhealthy policy may generate a round", location="health_override")
    with transaction.atomic():
        locked = ModelArtifact.objects.select_for_update().get(pk=artifact.pk)
        locked.health_override_by, locked.health_override_reason = user, reason[:500]
        locked.health_override_at = timezone.now()
        locked.save(update_fields=["health_override_by", "health_override_reason", "health_override_at"])
    return locked


def health_refusal(artifact: ModelArtifact) -> str:
    """Why ``artifact`` may not generate a round ("" when it may)."""
    if artifact.may_generate:
        return ""
    reasons = "; ".join((artifact.health or {}).get("reasons") or []) or "no reason recorded"
    return (f"policy {artifact.name} (#{artifact.pk}) failed the health gate ({reasons}); a researcher may "
            "override it with a reason (API: \"health_override\": \"why\"; CLI: --override-health WHY --user NAME)")
