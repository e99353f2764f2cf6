"""JSON API of the arena. Same conventions as ``annotation/api.py``: non-members get 404, labelers 403 on
researcher actions, rejected input a 400 ``{"error": message, "location": where}`` with nothing written.

Voters get blind data only: the next pair as ``left``/``right`` (sample id and raw text; a client must escape
it), never the model names. Researchers also see each arena's name and checkpoints.
"""
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import selectors
from annotation.api_helpers import ERRORS, error_response, validated
from annotation.errors import InvalidInput, NotAllowed
from annotation.services import MAX_TIME_SPENT_MS
from lab import services as arena_service
from lab import selectors as lab_selectors
from lab.models import Arena
from training.disclosure import value_redact
from training.idempotency import KeyReused, idempotent_write, key_from_request


class ArenaCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    model_a = serializers.IntegerField(help_text="ModelArtifact id (policy or base) of this project.")
    model_b = serializers.IntegerField()
    items = serializers.ListField(child=serializers.JSONField(), help_text=(
        'Prompts: {"prompt": str} or {"messages": [...]}, each optionally with "response_a" and "response_b".'))
    sampling = serializers.DictField(required=False, default=dict,
                                     help_text="temperature, top_p, max_new_tokens, seed, batch_size")


class VoteSerializer(serializers.Serializer):
    pair = serializers.IntegerField()
    left = serializers.IntegerField(help_text="The sample id you were shown on the left (from /next/).")
    choice = serializers.ChoiceField(choices=arena_service.CHOICES)
    time_spent_ms = serializers.IntegerField(required=False, default=0, min_value=0,
                                             max_value=MAX_TIME_SPENT_MS)


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="A client key: a repeat answers 200 with the first arena and writes nothing (422: key reused).")


def arena_json(arena: Arena, *, manage: bool, admin: bool = False) -> dict:
    """An arena read with its counts (``lab.selectors.arena_list_with_counts`` / ``arena_with_counts``); server
    paths in its summary are shown to ``admin`` only."""
    data = {"id": arena.pk, "status": arena.status, "pairs": arena.pair_count, "my_votes": arena.my_vote_count}
    if manage:
        summary = arena.summary if admin else value_redact(arena.summary)
        data.update(name=arena.name, round=arena.round.number, summary=summary,
                    sampling=arena.sampling_params, votes=arena.vote_count,
                    model_a={"id": arena.model_a_id, "name": arena.model_a.name},
                    model_b={"id": arena.model_b_id, "name": arena.model_b.name})
    return data


@extend_schema(methods=["GET"], responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Arenas of a project")
@extend_schema(methods=["POST"], request=ArenaCreateSerializer, parameters=[IDEMPOTENCY_KEY],
               responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT, **ERRORS,
                          422: OpenApiResponse(description="The Idempotency-Key was used for a different request.")},
               summary="Create an arena (researchers): with responses it opens at once, else a worker generates")
@api_view(["GET", "POST"])
def arena_list(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    manage = selectors.user_can_manage(user=request.user, project=project)
    if request.method == "GET":
        arenas = lab_selectors.arena_list_with_counts(user=request.user, project=project)
        return Response([arena_json(a, manage=manage, admin=request.user.is_superuser) for a in arenas])
    if not manage:
        raise PermissionDenied("Only researchers of this project and admins may do this.")
    data, error = validated(ArenaCreateSerializer, request.data)
    if error:
        return error
    models = lab_selectors.artifacts_by_id(ids=[data["model_a"], data["model_b"]])
    try:
        arena, replayed = idempotent_write(
            user=request.user, scope=f"arena_create:project {project.pk}", key=key_from_request(request),
            arguments=data, write=lambda: arena_service.arena_create(
                project=project, model_a=models.get(data["model_a"]), model_b=models.get(data["model_b"]),
                name=data["name"], items=data["items"], sampling=data["sampling"], user=request.user),
        )
    except KeyReused as exc:
        return error_response(exc.message, exc.location, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    body = arena_json(lab_selectors.arena_with_counts(user=request.user, arena=arena), manage=True,
                      admin=request.user.is_superuser)
    if replayed:
        return Response(body, status=status.HTTP_200_OK, headers={"Idempotent-Replayed": "true"})
    return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(responses={200: OpenApiTypes.OBJECT, 204: None, **ERRORS},
               summary="The next pair for you to vote on (204 when none is left)")
@api_view(["GET"])
def arena_next(request: Request, slug: str, arena_id: int) -> Response:
    arena = lab_selectors.arena_get_for_user(user=request.user, slug=slug, arena_id=arena_id)
    pair = lab_selectors.arena_pair_next_for_voter(arena=arena, voter=request.user)
    if pair is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    texts = lab_selectors.arena_pair_texts(pair=pair)
    left, right = lab_selectors.arena_shown_order(pair=pair, voter=request.user)
    return Response({"pair": pair.pk, "messages": pair.prompt.messages,
                     "left": {"sample_id": left, "text": texts[left]},
                     "right": {"sample_id": right, "text": texts[right]}})


@extend_schema(request=VoteSerializer, responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Vote on a pair: left, right, tie or both_bad (idempotent)")
@api_view(["POST"])
def arena_vote(request: Request, slug: str, arena_id: int) -> Response:
    arena = lab_selectors.arena_get_for_user(user=request.user, slug=slug, arena_id=arena_id)
    data, error = validated(VoteSerializer, request.data)
    if error:
        return error
    lab_selectors.arena_pair_require(arena=arena, pair_id=data["pair"])
    before = lab_selectors.arena_voted(pair_id=data["pair"], voter=request.user)
    try:
        vote = arena_service.arena_vote(pair_id=data["pair"], voter=request.user, choice=data["choice"],
                                        left_sample_id=data["left"], time_spent_ms=data["time_spent_ms"])
    except NotAllowed as exc:
        raise Http404("No such pair.") from exc
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    body = {"vote": vote.pk, "ranking": vote.ranking_id, "choice": data["choice"],
            "pairs_written": lab_selectors.ranking_pair_count(ranking_id=vote.ranking_id)}
    return Response(body, status=status.HTTP_200_OK if before else status.HTTP_201_CREATED)


@extend_schema(
    parameters=[OpenApiParameter("resamples", int, description="bootstrap resamples (default 200)"),
                OpenApiParameter("seed", int, description="bootstrap seed (default 0)")],
    responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Bradley-Terry leaderboard with bootstrap intervals",
)
@api_view(["GET"])
def arena_leaderboard(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    if not selectors.user_can_manage(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may do this.")
    try:
        params = {}
        for name in ("resamples", "seed"):
            raw = request.query_params.get(name)
            if raw is not None:
                if not raw.strip().isdigit():
                    raise InvalidInput(f"must be a whole number, got {raw[:20]!r}", location=name)
                params[name] = int(raw)
        return Response(lab_selectors.arena_leaderboard(project=project, **params))
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
