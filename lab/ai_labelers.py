"""AI labelers (RLAIF): a user account flagged as AI whose rankings come from a scorer, not a person.

Three kinds of scorer, each ``score(messages, texts) -> [float]`` (higher is better):
- ``utility``: a rule-based function of ``(prompt_messages, response_text)``, the same signature the simulated
  labelers use, chosen BY NAME from the operator's registry (``annotation.hooks``, e.g. ``default``, ``demo``);
  the stored name is resolved through the registry again at run time, so nothing a user typed is imported;
- ``reward_model``: a registered reward-model artifact of the project (``ModelArtifact`` id), scored exactly
  as its trainer encoded sequences (``training.ml.data.encode_group``);
- ``llm_judge``: a causal LM (a policy/base artifact id of the project, or a directory under the operator's model
  roots), asked "Is the reply helpful, correct and on topic? Answer:" and
  scored log p(" Yes") − log p(" No") of its next token.

An AI labeler leases prompts and submits through ``assignment_next_for_labeler`` / ``ranking_submit`` like a
human, with ``source="ai"``; its agreement with human labelers and with gold is in the quality report
(``agreement_with_humans``, ``gold_agreement``), so a researcher decides with figures.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Membership, Project
from annotation.quality.models import AILabeler
from annotation.services import assignment_next_for_labeler, ranking_submit
from annotation.hooks import hook_check, hook_resolve
from preferences.tiers import tiers_from_scores

Scorer = Callable[[list[dict], list[str]], list[float]]
AI_USERNAME = "ai-{name}@{project}"  # per project: two projects may each have an AI labeler "rules"
LEGACY_AI_USERNAME = "ai-{name}"  # accounts created before names were per project
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
JUDGE_TEMPLATE = ("Conversation:\n{conversation}\n\nReply:\n{reply}\n\n"
                  "Is the reply helpful, correct and on topic? Answer:")


def _check_spec(*, project: Project, kind: str, spec: str) -> None:
    if kind == AILabeler.Kind.UTILITY:
        hook_check(kind="utility", name=spec, location="spec")
    elif kind == AILabeler.Kind.REWARD_MODEL:
        reward_artifact_get(project=project, spec=spec)
    elif kind == AILabeler.Kind.LLM_JUDGE:
        _judge_dir(project=project, spec=spec)
    else:
        raise InvalidInput(f"unknown kind {str(kind)[:40]!r}; expected one of {AILabeler.Kind.values}", location="kind")


def reward_artifact_get(*, project: Project, spec: str):
    from training.models import ModelArtifact

    artifact = ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.REWARD,
                                            pk=int(spec) if str(spec).isdigit() else -1).first()
    if artifact is None:
        raise InvalidInput(f"project {project.slug} has no reward model artifact {str(spec)[:40]!r}", location="spec")
    return artifact


def _judge_dir(*, project: Project, spec: str) -> str:
    """The judge's model: a policy or base artifact of the project (its id), or a directory under the operator's
    model roots (``training.model_sources.typed_model_dir``: never another project's runs, never a hub id
    while the hub is off). Checked again at run time, so a row stored before these rules is refused."""
    from training.model_sources import typed_model_dir
    from training.models import ModelArtifact
    from training.artifact_paths import artifact_dir

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


def ai_labeler_create(*, project: Project, name: str, kind: str, spec: str, tie_threshold: float = 0.0) -> AILabeler:
    """Create (or update) the project's AI labeler ``<name>``: the user ``ai-<name>@<project slug>`` with no
    password, a labeler of the project. Names are per project; an existing ``ai-<name>`` labeler of this
    project (created before names were per project) is updated in place."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput("name must be 1-41 lowercase letters, digits, '-' or '_'", location="name")
    if not isinstance(tie_threshold, (int, float)) or isinstance(tie_threshold, bool) or tie_threshold < 0:
        raise InvalidInput("tie threshold must be a number >= 0", location="tie_threshold")
    _check_spec(project=project, kind=kind, spec=spec)
    User = get_user_model()
    with transaction.atomic():
        legacy = AILabeler.objects.filter(project=project, user__username=LEGACY_AI_USERNAME.format(name=name)).first()
        if legacy is not None:
            user, created = legacy.user, False
        else:
            user, created = User.objects.get_or_create(username=AI_USERNAME.format(name=name, project=project.slug))
        existing = AILabeler.objects.filter(user=user).first()
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        elif existing is None or existing.project_id != project.pk:
            raise InvalidInput(f"user {user.username} exists and is not this project's AI labeler", location="name")
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": Membership.Role.LABELER})
        labeler, _ = AILabeler.objects.update_or_create(
            user=user, defaults={"project": project, "kind": kind, "spec": spec, "tie_threshold": float(tie_threshold)}
        )
    return labeler


def utility_scorer(spec: str) -> Scorer:
    utility = hook_resolve(kind="utility", name=spec, location="spec")
    return lambda messages, texts: [float(utility(messages, text)) for text in texts]


def reward_model_scorer(model_dir: str | Path, *, base_model: str = "", max_length: int = 512) -> Scorer:
    """Scores from a sequence-classification reward model (full model, or a LoRA adapter on ``base_model``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.ml.data import encode_group
    from training.ml.types import RankedGroup

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if base_model:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad_id

    @torch.no_grad()
    def score(messages: list[dict], texts: list[str]) -> list[float]:
        group = RankedGroup(prompt_id=0, messages=messages, responses=texts, rankings=[])
        sequences = encode_group(tokenizer, group, max_length=max_length).input_ids  # K lists of ids
        width = max(len(s) for s in sequences)
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])  # (K, T)
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])  # (K, T)
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().tolist()  # (K,)

    return score


def llm_judge_scorer(model_dir: str | Path, *, max_length: int = 1024) -> Scorer:
    """Scores log p(" Yes") − log p(" No") of a local causal LM asked whether each reply is good."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.ml.data import render_plain

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" Yes", " No"))

    @torch.no_grad()
    def score(messages: list[dict], texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            prompt = JUDGE_TEMPLATE.format(conversation=render_plain(messages).strip(), reply=text)
            ids = tokenizer.encode(prompt)[-max_length:]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,) next-token logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            out.append(float(logp[yes] - logp[no]))
        return out

    return score


def scorer_for(labeler: AILabeler) -> Scorer:
    if labeler.kind == AILabeler.Kind.UTILITY:
        return utility_scorer(labeler.spec)
    if labeler.kind == AILabeler.Kind.REWARD_MODEL:
        from training.artifact_paths import artifact_dir

        artifact = reward_artifact_get(project=labeler.project, spec=labeler.spec)
        return reward_model_scorer(artifact_dir(artifact=artifact),
                                   base_model=artifact.base_model if artifact.is_adapter else "")
    return llm_judge_scorer(_judge_dir(project=labeler.project, spec=labeler.spec))


def ai_labeler_run(*, labeler: AILabeler, max_prompts: int | None = None, scorer: Scorer | None = None) -> dict:
    """Rank prompts as this AI labeler until its queue is empty (or ``max_prompts``); returns counts."""
    scorer = scorer or scorer_for(labeler)
    user, project = labeler.user, labeler.project
    done = pairs = 0
    reason = ""
    while max_prompts is None or done < max_prompts:
        assignment = assignment_next_for_labeler(project=project, labeler=user)
        if assignment is None:
            reason = ai_labeler_idle_reason(labeler=labeler)
            break
        texts = dict(assignment.prompt.samples.values_list("pk", "text"))
        ids = list(assignment.shown_order)
        scores = scorer(assignment.prompt.messages, [texts[i] for i in ids])
        bad = [s for s in scores if not isinstance(s, (int, float)) or not math.isfinite(s)]
        if len(scores) != len(ids) or bad:
            raise InvalidInput(f"the scorer returned {scores!r:.200} for prompt {assignment.prompt_id}; "
                               f"expected {len(ids)} finite numbers", location="scorer")
        tiers = tiers_from_scores(dict(zip(ids, scores)), tie_threshold=labeler.tie_threshold)
        ranking = ranking_submit(assignment_id=assignment.pk, labeler=user, tiers=tiers, source="ai")
        done += 1
        pairs += ranking.pairs.count()
    return {"labeler": user.username, "rankings": done, "pairs": pairs, "reason": reason}


def ai_labeler_idle_reason(*, labeler: AILabeler) -> str:
    """Why the AI labeler has nothing (more) to rank, in words: no open round, no rankable prompt, or it has
    ranked every open prompt. AI labelers do not take human overlap slots, so full slots are never the reason."""
    from annotation.models import Prompt, Ranking, Round

    open_prompts = Prompt.objects.filter(project=labeler.project, round__status=Round.Status.OPEN, is_gold=False)
    total = open_prompts.count()
    if not total:
        return "the project has no open (non-gold) prompts: start a round or import samples first"
    ranked = Ranking.objects.filter(prompt__in=open_prompts, labeler=labeler.user).count()
    if ranked >= total:
        return f"it has already ranked all {total} (non-gold) prompts of the open rounds"
    return (f"it has ranked {ranked} of the {total} open prompts; the rest have fewer than two responses "
            "or are leased to it in another run")


def reward_models_of_project(*, project):
    """The project's reward models, newest first (the uncertainty strategy and reward-model AI labelers)."""
    from training.models import ModelArtifact

    return list(ModelArtifact.objects.filter(project=project, kind=ModelArtifact.Kind.REWARD).order_by("-id"))
