"""Reads of the training app: runs and artifacts a user may see, progress, metric series, trainer inputs.

Visibility: researchers of the project and admins see its runs and artifacts; labelers see nothing of
training (403 on the project's training pages, 404 on a run or model by id) and non-members get Http404
(existence is never revealed). Researchers and admins launch and cancel (``user_can_launch``). Server
paths and tracebacks are shown to admins only (``run_disclosed``, ``artifact_disclosed``).
"""
from __future__ import annotations

import os
import stat
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.db.models import Avg, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from annotation.models import PairwiseComparison, Project, Prompt, RankingEntry
from annotation.provenance import AI_SOURCES
from annotation.models import Membership
from annotation.selectors import project_get_for_user, project_list_for_user, user_can_manage
from training.disclosure import text_redact, value_redact
from training.artifact_paths import ROOT_PREFIX, artifact_base_model, artifact_dir, artifact_root
from training.accuracy import accuracy_of_summary, accuracy_with_interval
from training.ml.types import RankedGroup
from training.models import DatasetSnapshot, MetricPoint, ModelArtifact, TrainingRun

ETA_WINDOW = 20  # recent train steps used to estimate the step rate


def project_list_for_training(*, user) -> QuerySet[Project]:
    """Projects whose training the user may see: those they research (all for superusers)."""
    projects = project_list_for_user(user=user)
    if getattr(user, "is_superuser", False):
        return projects
    return projects.filter(memberships__user=user, memberships__role=Membership.Role.RESEARCHER)


def project_get_for_training(*, user, slug: str) -> Project:
    """The project if the user may see its training; Http404 for non-members, PermissionDenied for labelers."""
    project = project_get_for_user(user=user, slug=slug)
    if not user_can_manage(user=user, project=project):
        raise PermissionDenied("Labelers do not see training runs or models; ask a researcher of this project.")
    return project


def user_can_launch(*, user, project: Project) -> bool:
    return user_can_manage(user=user, project=project)


POLICY_BASE_NAMES = ("tiny-causal-lm", "tiny-policy-base")  # causal LMs the tiny builders register as BASE
REWARD_BASE_NAMES = ("tiny-reward-model",)  # a sequence classifier: a reward model's base, never a policy's


def base_model_default_for_reward(*, project: Project) -> ModelArtifact | None:
    """What a reward-model run starts from by default: the newest base model that is not a tiny policy LM."""
    bases = project.artifacts.filter(kind=ModelArtifact.Kind.BASE).order_by("-id")
    return bases.exclude(name__in=POLICY_BASE_NAMES).first() or bases.first()


def policy_default(*, project: Project) -> ModelArtifact | None:
    """What a policy run or a new round starts from by default: the newest policy, else the newest causal base."""
    newest_policy = project.artifacts.filter(kind=ModelArtifact.Kind.POLICY).order_by("-id").first()
    if newest_policy is not None:
        return newest_policy
    bases = project.artifacts.filter(kind=ModelArtifact.Kind.BASE).exclude(name__in=REWARD_BASE_NAMES)
    return bases.order_by("-id").first()


def run_list_for_project(*, project: Project) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(project=project).select_related("launched_by", "snapshot").order_by("-id")


def run_get_for_user(*, user, run_id: int) -> TrainingRun:
    """The run if the user may see its project's training; Http404 otherwise (labelers included)."""
    run = (
        TrainingRun.objects.filter(pk=run_id, project__in=project_list_for_training(user=user))
        .select_related("project", "snapshot", "base_artifact", "launched_by")
        .first()
    )
    if run is None:
        raise Http404("No such run.")
    return run


def artifact_list_for_project(*, project: Project) -> QuerySet[ModelArtifact]:
    return ModelArtifact.objects.filter(project=project).select_related("run", "snapshot", "parent").order_by("-id")


def artifact_of_project(*, project: Project, artifact_id: int) -> ModelArtifact | None:
    """The project's model with this id; None when it has none (another project's model included)."""
    return ModelArtifact.objects.filter(pk=artifact_id, project=project).first()


def run_reference(*, run: TrainingRun, user=None) -> dict | None:
    """Which reference a DPO run scores against (None for other kinds): ``{"source": "stored"}`` (the stored
    generation log-probs, the default), ``{"source": "artifact", "artifact": id, "name": …}`` (a policy of the
    project, the loop's round-0 anchor included: its config's ``reference_model`` is that artifact's stored
    path) or ``{"source": "directory", "path": …}`` (a directory under a model root; absolute paths redacted
    unless ``user`` is an admin)."""
    if run.kind != TrainingRun.Kind.DPO:
        return None
    value = (run.config or {}).get("reference_model") or ""
    if not value:
        return {"source": "stored", "artifact": None, "name": "", "path": ""}
    artifact = None
    if isinstance(value, str) and value.startswith(ROOT_PREFIX):
        relative = value[len(ROOT_PREFIX):]  # an artifact's row stores its path relative to the root (or absolute)
        artifact = (ModelArtifact.objects.filter(Q(path=relative) | Q(path=str(artifact_root() / relative)),
                                                 project_id=run.project_id, kind=ModelArtifact.Kind.POLICY)
                    .order_by("id").first())
    if artifact is not None:
        return {"source": "artifact", "artifact": artifact.pk, "name": artifact.name, "path": value}
    shown = value if user_sees_server_details(user=user) else text_redact(value)
    return {"source": "directory", "artifact": None, "name": "", "path": shown}


def project_has_base_model(*, project: Project) -> bool:
    return ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.BASE).exists()


def artifact_get_for_user(*, user, artifact_id: int) -> ModelArtifact:
    artifact = (
        ModelArtifact.objects.filter(pk=artifact_id, project__in=project_list_for_training(user=user))
        .select_related("project", "run", "snapshot", "parent")
        .first()
    )
    if artifact is None:
        raise Http404("No such artifact.")
    return artifact


def user_sees_server_details(*, user) -> bool:
    """Absolute server paths and tracebacks are for admins (superusers) only."""
    return bool(getattr(user, "is_superuser", False))


def run_disclosed(*, run: TrainingRun, user) -> dict:
    """The run's error, log, config and summary as this user may read them (redacted unless admin)."""
    fields = {"error": run.error, "log_tail": run.log_tail, "config": run.config, "summary": run.summary}
    if user_sees_server_details(user=user):
        return fields
    return {"error": text_redact(run.error), "log_tail": text_redact(run.log_tail),
            "config": value_redact(run.config), "summary": value_redact(run.summary)}


def artifact_disclosed(*, artifact: ModelArtifact, user) -> dict:
    """The model's path and base model as this user may read them (absolute paths redacted unless admin)."""
    if user_sees_server_details(user=user):
        return {"path": artifact.path, "base_model": artifact.base_model}
    return {"path": text_redact(artifact.path), "base_model": text_redact(artifact.base_model)}


def run_should_stop(*, run_id: int, claim_token: str) -> bool:
    """True when a cancel was requested or the run is no longer this claimant's (the trainer must stop)."""
    row = TrainingRun.objects.filter(pk=run_id).values("status", "claim_token", "cancel_requested").first()
    return (
        row is None or row["cancel_requested"] or row["claim_token"] != claim_token
        or row["status"] != TrainingRun.Status.RUNNING
    )


def run_progress(*, run: TrainingRun, now: datetime | None = None) -> dict:
    """Status card figures: step/total, percent, ETA in seconds (None until two steps were timed)."""
    now = now or timezone.now()
    total, step = run.total_steps, run.step
    eta = None
    if run.status == TrainingRun.Status.RUNNING and total and step < total:
        recent = list(
            MetricPoint.objects.filter(run=run, split="train").order_by("-step").values_list("step", "created_at")[
                :ETA_WINDOW
            ]
        )
        if len(recent) >= 2:
            (last_step, last_at), (first_step, first_at) = recent[0], recent[-1]
            seconds = (last_at - first_at).total_seconds()
            if last_step > first_step and seconds > 0:
                eta = (total - step) * seconds / (last_step - first_step)
    return {
        "status": run.status,
        "step": step,
        "total": total,
        "percent": round(100.0 * step / total, 1) if total else 0.0,
        "eta_seconds": eta,
        "is_terminal": run.is_terminal,
        "attempts": run.attempts,
        "elapsed_seconds": ((run.finished_at or now) - run.started_at).total_seconds() if run.started_at else None,
    }


def run_metric_series(*, run: TrainingRun) -> dict[str, dict[str, list]]:
    """``{"train": {"step": [...], "loss": [...], ...}, "eval": {...}}`` — aligned columns for plotting."""
    out: dict[str, dict[str, list]] = {}
    for split in ("train", "eval"):
        points = list(MetricPoint.objects.filter(run=run, split=split).order_by("step").values_list("step", "values"))
        keys = sorted({key for _, values in points for key in values})
        series: dict[str, list] = {"step": [step for step, _ in points]}
        for key in keys:
            series[key] = [values.get(key) for _, values in points]
        out[split] = series
    return out


def snapshot_ranked_groups(*, snapshot: DatasetSnapshot) -> list[RankedGroup]:
    """The snapshot's rankings as trainer inputs: one RankedGroup per prompt with every ranking of it.

    Responses keep the prompt's sample order; tiers become lists of response indices (best first);
    a ranking's weight is the mean weight of its pairs (1.0 for a ranking of ties only), times the snapshot's
    ``ai_weight`` for AI-labeler rankings when its source choice was "weighted"; ``ref_logprobs``
    are the samples' stored generation log-probabilities (None where unknown).
    """
    ranking_ids = list(snapshot.rankings.values_list("id", flat=True))
    weights = dict(
        PairwiseComparison.objects.filter(ranking_id__in=ranking_ids)
        .values("ranking_id").annotate(w=Avg("weight")).values_list("ranking_id", "w")
    )
    ai_weight = (snapshot.filters or {}).get("ai_weight")
    if ai_weight is not None:  # source choice "weighted": AI rankings count ai_weight × their stored weight
        for ranking_id in snapshot.rankings.filter(source__in=AI_SOURCES).values_list("id", flat=True):
            weights[ranking_id] = float(weights.get(ranking_id, 1.0)) * float(ai_weight)
    tiers_by_ranking: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    prompt_of_ranking: dict[int, int] = {}
    entries = RankingEntry.objects.filter(ranking_id__in=ranking_ids).values_list(
        "ranking_id", "ranking__prompt_id", "tier", "sample_id"
    )
    for ranking_id, prompt_id, tier, sample_id in entries.iterator(chunk_size=5000):
        tiers_by_ranking[ranking_id][tier].append(sample_id)
        prompt_of_ranking[ranking_id] = prompt_id
    rankings_by_prompt: dict[int, list[int]] = defaultdict(list)
    for ranking_id in sorted(prompt_of_ranking):
        rankings_by_prompt[prompt_of_ranking[ranking_id]].append(ranking_id)
    groups = []
    prompts = Prompt.objects.filter(id__in=rankings_by_prompt).prefetch_related("samples").order_by("id")
    for prompt in prompts.iterator(chunk_size=500):
        samples = sorted(prompt.samples.all(), key=lambda s: s.position)
        index = {sample.id: i for i, sample in enumerate(samples)}
        rankings, ranking_weights = [], []
        for ranking_id in rankings_by_prompt[prompt.id]:
            tiers = tiers_by_ranking[ranking_id]
            rankings.append([sorted(index[s] for s in tiers[t]) for t in sorted(tiers)])
            ranking_weights.append(float(weights.get(ranking_id, 1.0)))
        groups.append(RankedGroup(
            prompt_id=prompt.id, messages=list(prompt.messages), responses=[s.text for s in samples],
            rankings=rankings, weights=ranking_weights, ref_logprobs=[s.logprob for s in samples],
        ))
    return groups


class _ChunkSink:
    """A write-only file for zipfile that hands out what was written so far (zip without seeking)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def artifact_zip_chunks(*, artifact: ModelArtifact, chunk_size: int = 1 << 20):
    """Stream the artifact's directory as a zip, file by file in 1 MiB reads: memory stays bounded."""
    import zipfile

    root = artifact_dir(artifact=artifact)
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in artifact_files(root):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a file swapped for a symlink meanwhile is refused
            with os.fdopen(fd, "rb") as source, \
                    archive.open(str(path.relative_to(root)), mode="w", force_zip64=True) as out:
                while block := source.read(chunk_size):
                    out.write(block)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def artifact_files(root: Path) -> list[Path]:
    """The regular files under ``root``, sorted; symlinks (to files or directories) are never followed."""
    out = []
    for folder, dirs, files in os.walk(root, followlinks=False):  # a symlinked directory is listed, not entered
        for name in files:
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                out.append(path)
    return sorted(out)


# ----------------------------------------------------------------------------- lineage of the loop
def project_lineage(*, project: Project) -> list[dict]:
    """Rounds oldest first, each with its counts, report, the runs that generated and trained on it, the
    policies they produced and the rounds those policies generated (the chain round → samples → rankings/pairs
    → reward model → policy run → next round)."""
    from django.db.models import Count

    from annotation.models import Ranking, Round, Sample
    from training.models import RoundReport

    def per_round(queryset, key: str) -> dict[int, int]:
        return dict(queryset.values(key).annotate(n=Count("id")).values_list(key, "n"))

    prompts = per_round(Prompt.objects.filter(project=project), "round_id")
    samples = per_round(Sample.objects.filter(prompt__project=project), "prompt__round_id")
    rankings = per_round(Ranking.objects.filter(prompt__project=project), "prompt__round_id")
    pairs = per_round(PairwiseComparison.objects.filter(prompt__project=project), "prompt__round_id")
    reports = {r.round_id: r for r in RoundReport.objects.filter(round__project=project).select_related("policy")}
    runs = list(TrainingRun.objects.filter(project=project).select_related("artifact", "base_artifact").order_by("id"))
    rounds = list(Round.objects.filter(project=project).order_by("number"))
    generated_by = {}  # policy artifact id -> round numbers it generated
    for rnd in rounds:
        report = reports.get(rnd.id)
        if report is not None and report.policy_id:
            generated_by.setdefault(report.policy_id, []).append(rnd.number)
    policy_of_round = {rid: rep.policy_id for rid, rep in reports.items()}
    out = []
    for rnd in rounds:
        mine = [run for run in runs if run.round_id == rnd.id or (
            run.round_id is None and run.base_artifact_id and run.base_artifact_id == policy_of_round.get(rnd.id))]
        out.append({
            "round": rnd, "report": reports.get(rnd.id),
            "counts": {"prompts": prompts.get(rnd.id, 0), "samples": samples.get(rnd.id, 0),
                       "rankings": rankings.get(rnd.id, 0), "pairs": pairs.get(rnd.id, 0)},
            "generate_runs": [run for run in mine if run.kind == TrainingRun.Kind.GENERATE],
            "train_runs": [{"run": run, "artifact": getattr(run, "artifact", None),
                            "next_rounds": generated_by.get(getattr(getattr(run, "artifact", None), "pk", None), [])}
                           for run in mine if run.kind != TrainingRun.Kind.GENERATE],
        })
    return out


def lineage_as_json(*, lineage: list[dict]) -> list[dict]:
    """The lineage with ids and figures only (the API's shape)."""
    def run_json(run, artifact=None, next_rounds=()):
        return {"id": run.pk, "kind": run.kind, "status": run.status, "overoptimised": run.overoptimised,
                "flag_reason": run.flag_reason, "artifact": artifact.pk if artifact else None,
                "artifact_healthy": artifact.healthy if artifact else None,
                "artifact_health_reasons": (artifact.health or {}).get("reasons", []) if artifact else [],
                "next_rounds": list(next_rounds), "held_out_accuracy": accuracy_of_summary(run.summary)}

    return [{
        "round": item["round"].number, "status": item["round"].status, "sampling_params": item["round"].sampling_params,
        "policy": item["report"].policy_id if item["report"] else None, "counts": item["counts"],
        "policy_healthy": item["report"].policy.healthy if item["report"] and item["report"].policy else None,
        "metrics": item["report"].metrics if item["report"] else {},
        "rm_accuracy": accuracy_with_interval((item["report"].metrics or {}).get("rm_accuracy"),
                                              (item["report"].metrics or {}).get("rm_eval_pairs"))
        if item["report"] else None,
        "overoptimised": bool(item["report"] and item["report"].overoptimised),
        "flag_reason": item["report"].flag_reason if item["report"] else "",
        "generate_runs": [run_json(r) for r in item["generate_runs"]],
        "train_runs": [run_json(t["run"], t["artifact"], t["next_rounds"]) for t in item["train_runs"]],
    } for item in lineage]


def ranking_lock_by_snapshot(ranking) -> str:
    """Registered with annotation (``TrainingConfig.ready``): a snapshotted ranking can no longer be changed."""
    if DatasetSnapshot.objects.filter(rankings=ranking).exists():
        return "a training run has already used this ranking; it can no longer be changed"
    return ""


def policy_load(artifact: ModelArtifact):
    """(model, tokenizer) of a policy artifact (a LoRA adapter merged into its base)."""
    from training.ml.generation import load_policy

    if artifact.is_adapter:
        return load_policy(artifact_base_model(artifact=artifact), artifact_dir(artifact=artifact))
    return load_policy(artifact_dir(artifact=artifact))
