"""Reads of the AI labelers (RLAIF): which model a spec names, the scorer a labeler ranks with, and why a
labeler has nothing to rank. The writes are in ``lab.ai_labelers.services``; the scorers in ``lab.scorers``."""
from __future__ import annotations

from pathlib import Path

from annotation.errors import InvalidInput
from annotation.hooks import hook_check
from annotation.models import Project, Prompt, Ranking, Round
from annotation.quality.models import AILabeler
from lab.scorers import Scorer, llm_judge_scorer, reward_model_scorer, utility_scorer
from training.artifact_paths import artifact_base_model, artifact_dir
from training.model_sources import typed_model_dir
from training.models import ModelArtifact


def ai_labeler_spec_check(*, project: Project, kind: str, spec: str) -> None:
    """InvalidInput unless ``spec`` names a scorer of ``kind`` this project may use."""
    if kind == AILabeler.Kind.UTILITY:
        hook_check(kind="utility", name=spec, location="spec")
    elif kind == AILabeler.Kind.REWARD_MODEL:
        reward_artifact_get(project=project, spec=spec)
    elif kind == AILabeler.Kind.LLM_JUDGE:
        judge_model_dir(project=project, spec=spec)
    else:
        raise InvalidInput(f"unknown kind {str(kind)[:40]!r}; expected one of {AILabeler.Kind.values}", location="kind")


def reward_artifact_get(*, project: Project, spec: str) -> ModelArtifact:
    """The project's reward model whose id is ``spec``; InvalidInput otherwise."""
    artifact = ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.REWARD,
                                            pk=int(spec) if str(spec).isdigit() else -1).first()
    if artifact is None:
        raise InvalidInput(f"project {project.slug} has no reward model artifact {str(spec)[:40]!r}", location="spec")
    return artifact


def judge_model_dir(*, project: Project, spec: str) -> str:
    """The judge's model: a policy or base artifact of the project (its id), or a directory under the operator's
    model roots (``training.model_sources.typed_model_dir``: never another project's runs, never a hub id
    while the hub is off). Checked again at run time, so a row stored before these rules is refused."""
    if isinstance(spec, str) and spec.strip().isdigit():
        artifact = ModelArtifact.objects.filter(
            project=project, pk=int(spec), is_adapter=False,
            kind__in=[ModelArtifact.Kind.POLICY, ModelArtifact.Kind.BASE]).first()
        if artifact is None:
            raise InvalidInput(f"project {project.slug} has no full policy or base model artifact {spec[:40]!r}",
                               location="spec")
        return str(artifact_dir(artifact=artifact))
    path = typed_model_dir(spec, location="spec")
    if Path(path).is_absolute() and not (Path(path) / "config.json").is_file():  # an adapter alone cannot judge
        raise InvalidInput("the judge must be a full causal LM directory (config.json)", location="spec")
    return path


def ai_labeler_scorer(*, labeler: AILabeler) -> Scorer:
    """The scorer the labeler's kind and spec name (its models loaded)."""
    if labeler.kind == AILabeler.Kind.UTILITY:
        return utility_scorer(labeler.spec)
    if labeler.kind == AILabeler.Kind.REWARD_MODEL:
        artifact = reward_artifact_get(project=labeler.project, spec=labeler.spec)
        return reward_model_scorer(artifact_dir(artifact=artifact),
                                   base_model=artifact_base_model(artifact=artifact) if artifact.is_adapter else "")
    return llm_judge_scorer(judge_model_dir(project=labeler.project, spec=labeler.spec))


def ai_labeler_idle_reason(*, labeler: AILabeler) -> str:
    """Why the AI labeler has nothing (more) to rank, in words: no open round, no rankable prompt, or it has
    ranked every open prompt. AI labelers do not take human overlap slots, so full slots are never the reason."""
    open_prompts = Prompt.objects.filter(project=labeler.project, round__status=Round.Status.OPEN, is_gold=False)
    total = open_prompts.count()
    if not total:
        return "the project has no open (non-gold) prompts: start a round or import samples first"
    ranked = Ranking.objects.filter(prompt__in=open_prompts, labeler=labeler.user).count()
    if ranked >= total:
        return f"it has already ranked all {total} (non-gold) prompts of the open rounds"
    return (f"it has ranked {ranked} of the {total} open prompts; the rest have fewer than two responses "
            "or are leased to it in another run")


def reward_models_of_project(*, project: Project) -> list[ModelArtifact]:
    """The project's reward models, newest first (the uncertainty strategy and reward-model AI labelers)."""
    return list(ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.REWARD).order_by("-id"))
