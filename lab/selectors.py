"""Reads of the lab app: arenas for a member, the next pair and its blind left/right order, progress, the
leaderboard, the checkpoints an arena may compare, and what the arena pages and API list.

Writes live in ``lab.services``; the AI labelers and active selection have their own ``services`` and
``selectors`` (``lab.ai_labelers``, ``lab.active``); the leaderboard's
arithmetic in ``lab.leaderboard``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Q
from django.http import Http404

from annotation.errors import InvalidInput
from annotation.models import Project
from annotation.selectors import project_get_for_user, user_role
from lab.leaderboard import leaderboard_from_votes
from lab.models import Arena, ArenaPair, ArenaVote


# ----------------------------------------------------------------------------- arenas
def arena_list_for_user(*, user, project: Project):
    """The project's arenas for any member (voters are shown ids only); none for non-members."""
    if user_role(user=user, project=project) is None:
        return Arena.objects.none()
    return Arena.objects.filter(project=project).select_related("model_a", "model_b")


def arena_get_for_user(*, user, slug: str, arena_id: int) -> Arena:
    """The arena if the user is a member of its project; Http404 otherwise (never reveals existence)."""
    project = project_get_for_user(user=user, slug=slug)
    arena = arena_list_for_user(user=user, project=project).filter(pk=arena_id).first()
    if arena is None:
        raise Http404("No such arena.")
    return arena


def arena_shown_order(*, pair: ArenaPair, voter) -> list[int]:
    """[left sample id, right sample id] for this voter: an HMAC coin flip, stable per (voter, pair)."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"arena:{pair.pk}:{voter.pk}".encode(), hashlib.sha256).digest()
    ids = sorted([pair.sample_a_id, pair.sample_b_id])
    return ids if digest[0] & 1 else ids[::-1]


def arena_pair_next_for_voter(*, arena: Arena, voter) -> ArenaPair | None:
    """A pair of the open arena this voter has not voted on (in a per-voter order), or None."""
    if arena.status != Arena.Status.OPEN:
        return None
    pending = list(arena.pairs.exclude(votes__voter=voter).values_list("pk", flat=True))
    if not pending:
        return None
    key = lambda pk: hmac.new(settings.SECRET_KEY.encode(), f"arena-order:{voter.pk}:{pk}".encode(),  # noqa: E731
                              hashlib.sha256).digest()
    return ArenaPair.objects.select_related("prompt").get(pk=min(pending, key=key))


def arena_progress_for_voter(*, arena: Arena, voter) -> dict:
    total = arena.pairs.count()
    done = ArenaVote.objects.filter(pair__arena=arena, voter=voter).count()
    return {"done": done, "total": total, "left": total - done}


def arena_votes_for_project(*, project: Project) -> list[tuple]:
    """Every counted vote as ``(model_a id, model_b id, outcome)``; votes whose ranking a researcher excluded
    (quality control) do not count."""
    return list(
        ArenaVote.objects.filter(pair__arena__project=project, ranking__exclusion__isnull=True)
        .values_list("pair__arena__model_a_id", "pair__arena__model_b_id", "outcome")
    )


def arena_leaderboard(*, project: Project, resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> dict:
    """The project's leaderboard: one row per compared checkpoint, with its name and kind."""
    from training.models import ModelArtifact

    if not 1 <= resamples <= 10_000:
        raise InvalidInput("resamples must be between 1 and 10000", location="resamples")
    if not 0.5 <= confidence < 1:
        raise InvalidInput("confidence must be in [0.5, 1)", location="confidence")
    votes = arena_votes_for_project(project=project)
    rows = leaderboard_from_votes(votes, resamples=resamples, seed=seed, confidence=confidence)
    artifacts = ModelArtifact.objects.in_bulk([r["model"] for r in rows])
    for row in rows:
        artifact = artifacts[row["model"]]
        row.update(model_id=row.pop("model"), name=artifact.name, kind=artifact.kind)
    return {"votes": len(votes), "resamples": resamples, "seed": seed, "confidence": confidence, "rows": rows}


GENERATOR_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def artifact_can_generate(artifact) -> bool:
    """Whether a model artifact can write responses: a policy, or a base model whose ``config.json`` names a
    causal-LM architecture. Reward models (and base models for them, e.g. ``tiny-reward-model``) cannot."""
    from training.models import ModelArtifact
    from training.artifact_paths import artifact_dir

    if artifact.kind == ModelArtifact.Kind.POLICY:
        return True
    if artifact.kind != ModelArtifact.Kind.BASE:
        return False
    try:
        config = json.loads((artifact_dir(artifact=artifact) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(names, list) and any(str(n).endswith(GENERATOR_ARCHITECTURE_SUFFIXES) for n in names)


def arena_generators(*, project: Project) -> list:
    """The project's artifacts that an arena may compare (policies and causal-LM bases), newest first."""
    from training.models import ModelArtifact

    artifacts = ModelArtifact.objects.filter(project=project, kind__in=[ModelArtifact.Kind.POLICY,
                                                                        ModelArtifact.Kind.BASE])
    return [a for a in artifacts.order_by("-created_at", "-id") if artifact_can_generate(a)]


# ----------------------------------------------------------------------------- what the arena pages and API list
def _with_counts(arenas, *, user):
    """Each arena with ``vote_count``, ``pair_count`` and ``my_vote_count`` (``user``'s votes) annotated."""
    return arenas.select_related("round").annotate(
        vote_count=Count("pairs__votes", distinct=True), pair_count=Count("pairs", distinct=True),
        my_vote_count=Count("pairs__votes", filter=Q(pairs__votes__voter=user), distinct=True),
    )


def arena_list_with_counts(*, user, project: Project) -> list[Arena]:
    """``arena_list_for_user`` with the counts the list shows: one query for the list, not three per arena."""
    return list(_with_counts(arena_list_for_user(user=user, project=project), user=user))


def arena_with_counts(*, user, arena: Arena) -> Arena:
    """One arena, read again with the counts of ``arena_list_with_counts``."""
    return _with_counts(Arena.objects.filter(pk=arena.pk).select_related("model_a", "model_b"), user=user).get()


def artifacts_by_id(*, ids) -> dict:
    """ModelArtifact rows by id (any project: ``arena_create`` refuses another project's checkpoint)."""
    from training.models import ModelArtifact

    return ModelArtifact.objects.in_bulk(list(ids))


def arena_pair_require(*, arena: Arena, pair_id: int) -> None:
    """Http404 unless ``pair_id`` is a pair of this arena."""
    if not ArenaPair.objects.filter(pk=pair_id, arena=arena).exists():
        raise Http404("No such pair.")


def arena_voted(*, pair_id: int, voter) -> bool:
    return ArenaVote.objects.filter(pair_id=pair_id, voter=voter).exists()


def arena_pair_texts(*, pair: ArenaPair) -> dict[int, str]:
    """{sample id: text} of the pair's two responses."""
    return dict(pair.prompt.samples.values_list("pk", "text"))


def ranking_pair_count(*, ranking_id: int) -> int:
    """How many training pairs a vote's ranking wrote (1 for a winner, 0 for a tie or both bad)."""
    from annotation.models import PairwiseComparison

    return PairwiseComparison.objects.filter(ranking_id=ranking_id).count()
