"""Writes of the AI labelers (RLAIF): a user account flagged as AI whose rankings come from a scorer, not a person.

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

The reads are in ``lab.ai_labelers.selectors``, the scorers in ``lab.scorers``.
"""
from __future__ import annotations

import math
import re

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Membership, Project
from annotation.quality.models import AILabeler
from annotation.services import assignment_next_for_labeler, ranking_submit
from lab.ai_labelers.selectors import ai_labeler_idle_reason, ai_labeler_scorer, ai_labeler_spec_check
from lab.scorers import Scorer
from preferences.tiers import tiers_from_scores

AI_USERNAME = "ai-{name}@{project}"  # per project: two projects may each have an AI labeler "rules"
LEGACY_AI_USERNAME = "ai-{name}"  # accounts created before names were per project
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def ai_labeler_create(*, project: Project, name: str, kind: str, spec: str, tie_threshold: float = 0.0) -> AILabeler:
    """Create (or update) the project's AI labeler ``<name>``: the user ``ai-<name>@<project slug>`` with no
    password, a labeler of the project. Names are per project; an existing ``ai-<name>`` labeler of this
    project (created before names were per project) is updated in place."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput("name must be 1-41 lowercase letters, digits, '-' or '_'", location="name")
    if not isinstance(tie_threshold, (int, float)) or isinstance(tie_threshold, bool) or tie_threshold < 0:
        raise InvalidInput("tie threshold must be a number >= 0", location="tie_threshold")
    ai_labeler_spec_check(project=project, kind=kind, spec=spec)
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


def ai_labeler_run(*, labeler: AILabeler, max_prompts: int | None = None, scorer: Scorer | None = None) -> dict:
    """Rank prompts as this AI labeler until its queue is empty (or ``max_prompts``); returns counts."""
    scorer = scorer or ai_labeler_scorer(labeler=labeler)
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
