"""Writes of the training app: runs, their snapshots, progress, and the artifacts they register.

The TrainingRun row is the source of truth. A Celery message only carries a run id; a worker must win
``run_claim`` (a conditional UPDATE) before it trains, so a redelivered or duplicated message never runs
a run twice at once. Every write from a worker carries the claim token it got, and is ignored when the
run has since been claimed by someone else (a fenced write). ``runs_reconcile`` re-queues runs whose
message was lost or whose worker died, so nothing is dropped either.
"""
from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.errors import InvalidInput, NotAllowed
from annotation.models import PairwiseComparison, Project, Ranking, Round
from annotation.provenance import HUMAN_ONLY, SourceSelection
from training.artifact_paths import (
    artifact_base_model,
    artifact_dir,
    artifact_path_contained,
    artifact_path_stored,
    base_models_dir,
    model_path_stored,
)
from training.jobs import job_for_kind
from training.jobs.base import config_parse
from training.model_sources import (
    model_fields_resolved,
    model_fields_stored,
    model_source_check,
    typed_model_fields_check,
)
from training.models import DatasetSnapshot, MetricPoint, ModelArtifact, TrainingRun

logger = logging.getLogger(__name__)

Status = TrainingRun.Status
LOG_TAIL_CHARS = 20_000
QUEUED_RESEND_AFTER = timedelta(seconds=60)
QUEUED_RESEND_MAX_INTERVAL = timedelta(hours=1)


# ----------------------------------------------------------------------------- creating a run
def run_create(
    *,
    project: Project,
    kind: str,
    config: dict,
    user=None,
    base_artifact: ModelArtifact | None = None,
    rounds: list[int] | None = None,
    sources: SourceSelection = HUMAN_ONLY,
    round: Round | None = None,
    reward_artifact: ModelArtifact | None = None,
    reference_artifact: ModelArtifact | None = None,
) -> TrainingRun:
    """Validate the config, record an immutable dataset snapshot, create the run and queue it on commit.

    Raises ``InvalidInput`` (nothing written) for an unknown kind, a bad config, a missing model directory
    or an empty dataset, and ``NotAllowed`` when ``user`` may not train in this project (``user=None`` is
    the operator at the command line, who may name any local model directory; a user's typed model settings
    must lie under the operator's model roots: ``training.model_sources``). ``base_artifact`` that is a LoRA
    adapter fills ``adapter`` and its base model; ``reward_artifact`` fills ``reward_model`` (PPO/GRPO);
    ``reference_artifact`` (a full policy of this project) fills DPO's ``reference_model``: its log-probs, scored
    once, are the reference instead of the stored generation log-probs; ``round`` is the round a generation run
    fills. Kinds without rankings (generate, PPO, GRPO; SFT unless
    ``rounds`` are given) take no snapshot.
    ``sources`` chooses which rankings the snapshot takes (default human only; ``annotation/provenance.py``).
    """
    if user is not None and not _user_can_launch(user=user, project=project):
        raise NotAllowed("Only researchers and admins of this project can launch training runs.")
    spec = job_for_kind(kind)
    if not isinstance(config, dict):
        raise InvalidInput("The config must be a JSON object.", location="config")
    if user is not None:  # what a user typed names no server path outside the operator's model roots
        config = typed_model_fields_check(config)
    config = _config_with_artifacts(project=project, kind=kind, config=config, spec=spec,
                                    base_artifact=base_artifact, reward_artifact=reward_artifact,
                                    reference_artifact=reference_artifact)
    # stored: models inside ARTIFACT_ROOT relative to it (every worker resolves them against its own root);
    # checked: the same config resolved here, as a worker will resolve it (containment checked on the result)
    stored = config_parse(kind=kind, data=model_fields_stored(config)).to_dict()
    config_obj = config_parse(kind=kind, data=model_fields_resolved(stored, user_launched=user is not None))
    model_source_check(getattr(config_obj, spec.base_model_field, ""), location=f"config.{spec.base_model_field}")
    for name in ("adapter", "reference_model"):  # a DPO/generation adapter or reference that does not exist: now
        if getattr(config_obj, name, ""):
            model_source_check(getattr(config_obj, name), location=f"config.{name}")
    with transaction.atomic():
        snapshot = None
        if spec.snapshot == "pairs" or (spec.snapshot == "optional" and rounds):
            snapshot = snapshot_create(project=project, rounds=rounds, sources=sources, require_pairs=spec.needs_pairs)
        if spec.check is not None:
            spec.check(project=project, config=config_obj, snapshot=snapshot, round=round)
        if round is None and snapshot is not None:
            round = project.rounds.filter(number__in=snapshot.filters.get("rounds") or []).order_by("-number").first()
        run = TrainingRun.objects.create(
            project=project, kind=kind, config=stored, snapshot=snapshot, base_artifact=base_artifact,
            round=round, launched_by=user, max_attempts=settings.RUN_MAX_ATTEMPTS,
            queued_at=timezone.now(), dispatches=1,
        )
        _enqueue_on_commit(run.id)
    return run


def _config_with_artifacts(*, project: Project, kind: str, config: dict, spec, base_artifact, reward_artifact,
                           reference_artifact=None) -> dict:
    """The config with the paths of the chosen registered models filled in (as resolved here; ``run_create``
    stores them relative to the artifact root)."""
    from training.ml.config import CONFIG_CLASSES

    config = dict(config)
    fields = set(CONFIG_CLASSES[kind].__dataclass_fields__) if kind in CONFIG_CLASSES else set()
    if base_artifact is not None:
        if base_artifact.project_id != project.id:
            raise InvalidInput("The base model belongs to another project.", location="base_artifact")
        path = str(artifact_dir(artifact=base_artifact))
        if base_artifact.is_adapter:
            if "adapter" not in fields:
                raise InvalidInput(f"A {kind} run cannot start from a LoRA adapter; choose a full model.",
                                   location="base_artifact")
            config["adapter"], path = path, artifact_base_model(artifact=base_artifact)
        config[spec.base_model_field] = path
    if reward_artifact is not None:
        if reward_artifact.project_id != project.id or reward_artifact.kind != ModelArtifact.Kind.REWARD:
            raise InvalidInput("Choose a reward model of this project.", location="reward_artifact")
        if "reward_model" not in fields:
            raise InvalidInput(f"A {kind} run takes no reward model.", location="reward_artifact")
        config["reward_model"] = str(artifact_dir(artifact=reward_artifact))
    if reference_artifact is not None:
        if reference_artifact.project_id != project.id or reference_artifact.kind != ModelArtifact.Kind.POLICY:
            raise InvalidInput("Choose a policy of this project as the reference.", location="reference_artifact")
        if "reference_model" not in fields:
            raise InvalidInput(f"A {kind} run takes no reference policy.", location="reference_artifact")
        if reference_artifact.is_adapter:
            raise InvalidInput("A LoRA adapter cannot be the reference; choose a full policy.",
                               location="reference_artifact")
        if config.get("reference_model"):
            raise InvalidInput("Give the reference as a policy of the project or in the config, not both.",
                               location="reference_artifact")
        config["reference_model"] = str(artifact_dir(artifact=reference_artifact))
    return config


def snapshot_create(
    *, project: Project, rounds: list[int] | None = None, sources: SourceSelection = HUMAN_ONLY,
    require_pairs: bool = True,
) -> DatasetSnapshot:
    """Record exactly which rankings a run trains on (ids, counts, sha256), so later rankings never change it.

    ``sources``: which ranking sources (default human only). ``filters`` records the choice (``sources``,
    ``included_sources``, ``ai_weight``, ``include_arena``) and the rankings taken per source
    (``rankings_by_source``); the trainers multiply AI rankings' weights by ``ai_weight`` (``weighted``).
    """
    if not isinstance(sources, SourceSelection):
        raise InvalidInput("Give the sources as a choice: human, ai, both, weighted or arena.", location="sources")
    all_rankings = Ranking.objects.filter(prompt__project=project, exclusion__isnull=True)  # excluded in review
    rankings = all_rankings
    if rounds:
        rounds = sorted({int(r) for r in rounds})
        known = set(Round.objects.filter(project=project, number__in=rounds).values_list("number", flat=True))
        missing = [r for r in rounds if r not in known]
        if missing:
            raise InvalidInput(f"Project {project.slug} has no round {missing[0]}.", location="rounds")
        rankings = rankings.filter(prompt__round__number__in=rounds)
        all_rankings = rankings
    else:
        rounds = sorted(project.rounds.values_list("number", flat=True))
    rankings = rankings.filter(source__in=sources.sources)
    try:
        with transaction.atomic():  # an empty snapshot is rolled back whole
            snapshot = DatasetSnapshot.objects.create(project=project, filters={"rounds": rounds, **sources.describe()})
            _snapshot_link_rankings(snapshot=snapshot, rankings=rankings)
            _snapshot_count(snapshot=snapshot)
            if not snapshot.num_rankings or (require_pairs and snapshot.num_pairs == 0):
                raise _EmptySnapshot
    except _EmptySnapshot:
        message, location = _empty_snapshot_reason(project=project, rounds=rounds, sources=sources,
                                                   other=all_rankings.exclude(source__in=sources.sources))
        raise InvalidInput(message, location=location) from None
    return snapshot


class _EmptySnapshot(Exception):
    pass


def _snapshot_link_rankings(*, snapshot: DatasetSnapshot, rankings) -> None:
    """One INSERT … SELECT in the database (10M pairs' rankings in seconds, no rows through Python)."""
    through = DatasetSnapshot.rankings.through
    table = connection.ops.quote_name(through._meta.db_table)
    snapshot_col = connection.ops.quote_name(through._meta.get_field("datasetsnapshot").column)
    ranking_col = connection.ops.quote_name(through._meta.get_field("ranking").column)
    select_sql, params = rankings.order_by().values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({snapshot_col}, {ranking_col}) "
                       f"SELECT %s, linked.id FROM ({select_sql}) AS linked", (snapshot.id, *params))
        if connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {table}")  # planner statistics for the counts below (a fresh table has none)


def _snapshot_count(*, snapshot: DatasetSnapshot) -> None:
    """Counts and hash of the linked rankings, read back from the link table (joins on primary keys)."""
    linked = Ranking.objects.filter(snapshots=snapshot)
    by_source = dict(linked.order_by().values("source").annotate(n=Count("pk")).values_list("source", "n"))
    digest = hashlib.sha256()
    ids = (DatasetSnapshot.rankings.through.objects.filter(datasetsnapshot=snapshot).order_by("ranking_id")
           .values_list("ranking_id", flat=True))
    for n, ranking_id in enumerate(ids.iterator(chunk_size=50_000)):
        digest.update(f",{ranking_id}".encode() if n else str(ranking_id).encode())  # sha256 of "id,id,…"
    snapshot.filters["rankings_by_source"] = dict(sorted(by_source.items()))
    snapshot.num_rankings = sum(by_source.values())
    snapshot.num_pairs = PairwiseComparison.objects.filter(ranking__snapshots=snapshot).count()
    snapshot.num_prompts = linked.values("prompt_id").distinct().count()
    snapshot.content_hash = digest.hexdigest()
    snapshot.save(update_fields=["filters", "num_rankings", "num_pairs", "num_prompts", "content_hash"])


def _empty_snapshot_reason(*, project: Project, rounds: list[int], sources: SourceSelection, other) -> tuple[str, str]:
    """Why a snapshot would be empty: nothing ranked yet, or rankings only from sources not chosen."""
    left_out = dict(other.order_by().values("source").annotate(n=Count("pk")).values_list("source", "n"))
    where = f"Project {project.slug} has no ranked pairs from sources {sources.label()} in rounds {rounds}"
    if left_out:
        counts = ", ".join(f"{n} {source}" for source, n in sorted(left_out.items()))
        return f"{where}; the rounds hold rankings from other sources ({counts}): choose them explicitly.", "sources"
    return f"{where}: rank some prompts first.", "rounds"


# ----------------------------------------------------------------------------- claiming and reporting
def run_claim(*, run_id: int, worker: str, now: datetime | None = None) -> TrainingRun | None:
    """Take the run: queued → running, or running with a stale heartbeat → running. None if not ours to take.

    One conditional UPDATE, so of two workers claiming at once exactly one wins; each claim gets a fresh
    token that fences the writes of any earlier claimant.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS)
    token = uuid.uuid4().hex
    claimable = Q(status=Status.QUEUED, cancel_requested=False) | Q(status=Status.RUNNING, heartbeat_at__lt=stale_before)
    won = (
        TrainingRun.objects.filter(claimable, pk=run_id, attempts__lt=F("max_attempts"))
        .update(
            status=Status.RUNNING, worker=worker[:200], claim_token=token, heartbeat_at=now,
            attempts=F("attempts") + 1, started_at=Coalesce("started_at", now), error="",
        )
    )
    return TrainingRun.objects.get(pk=run_id) if won else None


def _owned(run_id: int, claim_token: str):
    return TrainingRun.objects.filter(pk=run_id, status=Status.RUNNING, claim_token=claim_token)


def run_heartbeat(*, run_id: int, claim_token: str) -> bool:
    """Refresh the heartbeat; False when the claim was lost (the caller must stop)."""
    return bool(_owned(run_id, claim_token).update(heartbeat_at=timezone.now()))


def _finite(metrics: dict) -> dict:
    """JSON has no NaN/inf: store them as null so a diverging run still reports."""
    out = {}
    for key, value in metrics.items():
        value = float(value)
        out[str(key)] = value if math.isfinite(value) else None
    return out


def run_report_step(*, run_id: int, step: int, total: int, metrics: dict, claim_token: str) -> bool:
    """Upsert the step's train metrics, move step/total and the heartbeat. A resumed step overwrites its row."""
    with transaction.atomic():
        if not _owned(run_id, claim_token).update(step=step, total_steps=total, heartbeat_at=timezone.now()):
            return False
        _metric_upsert(run_id=run_id, split="train", step=step, values=_finite(metrics))
    return True


def run_report_eval(*, run_id: int, step: int, metrics: dict, claim_token: str) -> bool:
    with transaction.atomic():
        if not _owned(run_id, claim_token).update(heartbeat_at=timezone.now()):
            return False
        _metric_upsert(run_id=run_id, split="eval", step=step, values=_finite(metrics))
    return True


def _metric_upsert(*, run_id: int, split: str, step: int, values: dict) -> None:
    MetricPoint.objects.bulk_create(
        [MetricPoint(run_id=run_id, split=split, step=step, values=values)],
        update_conflicts=True, unique_fields=["run", "split", "step"], update_fields=["values"],
    )


def run_append_log(*, run_id: int, message: str, claim_token: str | None = None) -> None:
    """Append a line to the run's log, keeping only the last LOG_TAIL_CHARS characters."""
    line = f"{timezone.now():%H:%M:%S} {message.rstrip()}\n"
    with transaction.atomic():
        runs = TrainingRun.objects.select_for_update().filter(pk=run_id)
        if claim_token is not None:
            runs = runs.filter(claim_token=claim_token)
        run = runs.first()
        if run is None:
            return
        run.log_tail = (run.log_tail + line)[-LOG_TAIL_CHARS:]
        run.save(update_fields=["log_tail"])


# ----------------------------------------------------------------------------- ending a run
def run_request_cancel(*, run_id: int, user=None) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next step (the worker keeps a checkpoint)."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if user is not None and not _user_can_launch(user=user, project=run.project):
            raise NotAllowed("Only researchers and admins of this project can cancel its runs.")
        if run.is_terminal:
            return run
        if run.cancel_requested:  # a repeated cancel (double click, retry) writes nothing
            return run
        if run.status == Status.QUEUED:
            run.status, run.finished_at = Status.CANCELLED, timezone.now()
        run.cancel_requested = True
        run.save(update_fields=["status", "finished_at", "cancel_requested"])
        if run.is_terminal:
            _round_close_if_unfilled(run_id=run.pk)
    return run


def run_finish(
    *, run_id: int, status: str, summary: dict, error: str = "", claim_token: str | None = None,
    step: int | None = None,
) -> bool:
    """Move a running run to a terminal status. Fenced by ``claim_token`` when given; False if not ours.

    ``step``: where the trainer actually stopped (a run cancelled right after resuming stops at its
    checkpoint, behind the step its previous attempt had reported).
    """
    if status not in TrainingRun.TERMINAL:
        raise ValueError(f"run_finish needs a terminal status, got {status!r}")
    runs = TrainingRun.objects.filter(pk=run_id).exclude(status__in=TrainingRun.TERMINAL)
    if claim_token is not None:
        runs = runs.filter(claim_token=claim_token, status=Status.RUNNING)
    fields = {"step": step} if step is not None else {}
    with transaction.atomic():
        finished = runs.update(status=status, summary=json_safe(summary), error=error[:10_000],
                               finished_at=timezone.now(), heartbeat_at=timezone.now(), **fields)
        if finished:
            _round_close_if_unfilled(run_id=run_id)
    return bool(finished)


def run_retry_or_fail(*, run_id: int, error: str, claim_token: str | None = None) -> TrainingRun | None:
    """After a crash: queue the run again (it resumes from its checkpoint), or FAILED after max_attempts."""
    with transaction.atomic():
        runs = TrainingRun.objects.select_for_update().filter(pk=run_id, status=Status.RUNNING)
        if claim_token is not None:
            runs = runs.filter(claim_token=claim_token)
        run = runs.first()
        if run is None:
            return None
        if run.cancel_requested:
            _set_terminal(run, Status.CANCELLED, error=error)
        elif run.attempts >= run.max_attempts:
            _set_terminal(run, Status.FAILED, error=f"Failed after {run.attempts} attempts. Last error: {error}")
        else:
            _set_queued(run, error=error)
    return run


def run_requeue(*, run_id: int, claim_token: str, reason: str) -> bool:
    """Hand a run back to the queue without spending an attempt (the worker is shutting down, not the run)."""
    with transaction.atomic():
        run = _owned(run_id, claim_token).select_for_update().first()
        if run is None:
            return False
        run.attempts = max(run.attempts - 1, 0)
        _set_queued(run, error="")
        run.save(update_fields=["attempts"])
    run_append_log(run_id=run_id, message=f"re-queued: {reason}")
    return True


def _set_terminal(run: TrainingRun, status: str, *, error: str = "") -> None:
    run.status, run.error, run.finished_at = status, error[:10_000], timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])
    _round_close_if_unfilled(run_id=run.pk)


def _round_close_if_unfilled(*, run_id: int) -> None:
    """A generation run that ended without opening its round (cancelled, failed) leaves the round CLOSED and
    empty, not GENERATING for ever (the lineage page shows "generation cancelled/failed"). No-op for other
    runs, for rounds the run opened, and while another generation run of the round is still live."""
    live = TrainingRun.objects.filter(round=OuterRef("pk"), kind=TrainingRun.Kind.GENERATE).exclude(
        status__in=TrainingRun.TERMINAL)
    rounds = Round.objects.filter(status=Round.Status.GENERATING, runs__pk=run_id, runs__kind=TrainingRun.Kind.GENERATE)
    rounds.exclude(Exists(live)).update(status=Round.Status.CLOSED)


def _set_queued(run: TrainingRun, *, error: str, now: datetime | None = None) -> None:
    run.status, run.claim_token, run.worker, run.error = Status.QUEUED, "", "", error[:10_000]
    run.queued_at, run.dispatches = now or timezone.now(), 1
    run.save(update_fields=["status", "claim_token", "worker", "error", "queued_at", "dispatches"])
    _enqueue_on_commit(run.id)


def runs_reconcile(*, now: datetime | None = None) -> int:
    """Periodic repair: re-queue RUNNING runs whose heartbeat went stale (FAILED once out of attempts) and
    re-send the message of QUEUED runs nobody claimed for a minute (a lost message, a restarted Redis).
    Re-sends back off (1, 2, 4 … 60 min) so a long queue is not flooded. Returns the number of runs acted on.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS)
    acted = 0
    stale = Q(status=Status.RUNNING) & (Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True))
    for run_id in TrainingRun.objects.filter(stale).values_list("id", flat=True):
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update(skip_locked=True).filter(stale, pk=run_id).first()
            if run is None:
                continue
            seen = f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if run.heartbeat_at else "never"
            lost = f"The worker {run.worker or '?'} stopped reporting (last heartbeat {seen})."
            if run.cancel_requested:
                _set_terminal(run, Status.CANCELLED, error=lost)
            elif run.attempts >= run.max_attempts:
                _set_terminal(run, Status.FAILED, error=f"{lost} All {run.max_attempts} attempts are used.")
            else:
                _set_queued(run, error=lost, now=now)
            acted += 1
    for run in TrainingRun.objects.filter(status=Status.QUEUED, queued_at__lt=now - QUEUED_RESEND_AFTER):
        backoff = min(QUEUED_RESEND_AFTER * 2 ** max(run.dispatches - 1, 0), QUEUED_RESEND_MAX_INTERVAL)
        if run.queued_at + backoff > now:
            continue
        with transaction.atomic():
            if TrainingRun.objects.filter(pk=run.pk, status=Status.QUEUED, dispatches=run.dispatches).update(
                dispatches=F("dispatches") + 1, queued_at=now
            ):
                _enqueue_on_commit(run.pk)
                acted += 1
    return acted


# ----------------------------------------------------------------------------- artifacts
def artifact_register(
    *,
    project: Project,
    kind: str,
    name: str,
    path: str | Path,
    run: TrainingRun | None = None,
    snapshot: DatasetSnapshot | None = None,
    parent: ModelArtifact | None = None,
    is_adapter: bool = False,
    base_model: str = "",
    rounds: list[int] | None = None,
    metrics: dict | None = None,
    health: dict | None = None,
) -> ModelArtifact:
    """Record a save_pretrained directory with its lineage. Idempotent per run (a retried finish re-uses it).
    ``health``: the health gate's result for a policy (``training.health``); its verdict is ``healthy``."""
    from training.selectors import artifact_files

    resolved = artifact_path_contained(path)  # an artifact lives under ARTIFACT_ROOT, nowhere else
    if not resolved.is_dir() or not any((resolved / name).exists() for name in ("config.json", "adapter_config.json")):
        raise InvalidInput(f"{path} is not a save_pretrained directory (no config.json).", location="path")
    stored = artifact_path_stored(resolved)
    size = sum(f.stat().st_size for f in artifact_files(resolved))
    with transaction.atomic():
        if run is not None:
            existing = ModelArtifact.objects.filter(run=run).first()
            if existing is not None:
                return existing
        return ModelArtifact.objects.create(
            project=project, kind=kind, name=name[:200], path=stored, is_adapter=is_adapter,
            base_model=model_path_stored(base_model)[:500], parent=parent, run=run, snapshot=snapshot,
            rounds=list(rounds or []), metrics=json_safe(metrics or {}), size_bytes=size,
            healthy=(health or {}).get("healthy"), health=json_safe(health or {}),
        )


def json_safe(value):
    """Make a trainer summary storable as JSON: NaN/inf → null, paths and other objects → str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


# ----------------------------------------------------------------------------- helpers
def _user_can_launch(*, user, project: Project) -> bool:
    from annotation.selectors import user_can_manage

    return user_can_manage(user=user, project=project)


_run_enqueuers: list[Callable[[int], None]] = []


def run_enqueuer_register(enqueue: Callable[[int], None]) -> None:
    """How a run reaches a worker: ``training.tasks.run_enqueue``, registered in ``TrainingConfig.ready`` (so this
    module does not import the tasks that call it). A second call replaces the first."""
    _run_enqueuers[:] = [enqueue]


def _enqueue_on_commit(run_id: int) -> None:
    if not _run_enqueuers:
        raise RuntimeError("no run enqueuer registered: training.apps.TrainingConfig.ready registers it")
    enqueue = _run_enqueuers[0]
    # robust: if the broker is down the commit still stands and runs_reconcile re-sends later.
    transaction.on_commit(lambda: enqueue(run_id), robust=True)


def base_models_build_tiny(
    *, project: Project, vocab_size: int = 512, hidden: int = 64, layers: int = 2, heads: int = 4,
    max_positions: int = 256, seed: int = 0,
) -> list[ModelArtifact]:
    """Train a tokenizer on the project's own texts, build a tiny reward model and a tiny causal LM, and
    register both as BASE artifacts (re-running replaces the directories and updates the rows).
    """
    from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer

    texts = [m.get("content", "") for messages in project.prompts.values_list("messages", flat=True)
             for m in messages if isinstance(m, dict)]
    texts += list(_sample_texts(project=project))
    if not texts:
        raise InvalidInput(f"Project {project.slug} has no prompts: import some first.", location="project")
    from training.selectors import artifact_files

    root = base_models_dir(project_slug=project.slug)
    tokenizer = build_tokenizer(texts, root / "tokenizer", vocab_size=vocab_size)
    sizes = dict(hidden=hidden, layers=layers, heads=heads, max_positions=max_positions, seed=seed)
    built = {
        "tiny-reward-model": build_tiny_reward_model(root / "tiny-reward-model", tokenizer, **sizes),
        "tiny-causal-lm": build_tiny_causal_lm(root / "tiny-causal-lm", tokenizer, **sizes),
    }
    artifacts = []
    with transaction.atomic():
        for name, path in built.items():
            metrics = {"vocab_size": len(tokenizer), **sizes}
            artifact = ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.BASE, name=name).first()
            if artifact is None:
                artifact = artifact_register(
                    project=project, kind=ModelArtifact.Kind.BASE, name=name, path=path, metrics=metrics
                )
            else:  # rebuilt in place: runs that used it keep pointing at the same row
                artifact.metrics = metrics
                artifact.size_bytes = sum(f.stat().st_size for f in artifact_files(Path(path)))
                artifact.save(update_fields=["metrics", "size_bytes"])
            artifacts.append(artifact)
    return artifacts


def _sample_texts(*, project: Project):
    from annotation.models import Sample

    return Sample.objects.filter(prompt__project=project).values_list("text", flat=True).iterator(chunk_size=2000)


TINY_BASE_NAMES = ("tiny-reward-model", "tiny-causal-lm")


def base_models_ensure_tiny(*, project: Project, user=None) -> tuple[list[ModelArtifact], bool]:
    """The project's tiny base models, built (``base_models_build_tiny``) only when one is missing.

    Returns (artifacts, built). Idempotent: a second call, or a concurrent one (the project row is locked
    while building), finds them and builds nothing. ``NotAllowed`` unless ``user`` is a researcher or admin of
    the project (``user=None``: the operator); ``InvalidInput`` (nothing written) for a project with no texts.
    """
    if user is not None and not _user_can_launch(user=user, project=project):
        raise NotAllowed("Only researchers and admins of this project can build base models.")
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        existing = list(project.artifacts.filter(kind=ModelArtifact.Kind.BASE, name__in=TINY_BASE_NAMES)
                        .order_by("id"))
        if len(existing) == len(TINY_BASE_NAMES):
            return existing, False
        return base_models_build_tiny(project=project), True
