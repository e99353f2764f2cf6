"""JSON API of quality control (researchers and admins): report, weights, exclusions, gold, review, consensus.

Same conventions as ``annotation/api.py``: non-members get 404, labelers 403, rejected input a 400
``{"error": message, "location": where}`` with nothing written.
"""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotation.api_helpers import ERRORS, error_response, manageable_project, validated
from annotation.hooks import hook_names
from annotation.errors import InvalidInput
from annotation.extensions import model_services
from annotation.quality.models import AILabeler, SelectionRecord
from annotation.quality.strategy_evidence import DEFAULT_STRATEGY, STRATEGY_EVIDENCE
from annotation.quality.selectors import (
    ai_labeler_get, ai_labeler_list, prompt_get, quality_report, round_get, selection_list,
)
from annotation.quality.services import (
    gold_set, pair_weights_update, prompt_review, quality_settings_update, ranking_exclude, ranking_include,
)
from annotation.quality.views import consensus_jsonl

Tiers = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField(), allow_empty=False))


class SettingsSerializer(serializers.Serializer):
    gold_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    review_threshold = serializers.FloatField(required=False, min_value=0, max_value=1)
    speed_ratio = serializers.FloatField(required=False, min_value=0.001, max_value=1)


class ExclusionSerializer(serializers.Serializer):
    ranking_id = serializers.IntegerField()
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    include = serializers.BooleanField(default=False, help_text="true: undo the exclusion")


class GoldSerializer(serializers.Serializer):
    prompt_id = serializers.IntegerField()
    tiers = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField(), allow_empty=False),
                                  help_text="Sample ids, best tier first.")


class ReviewSerializer(serializers.Serializer):
    prompt_id = serializers.IntegerField()
    tiers = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField(), allow_empty=False),
                                  required=False, allow_null=True, default=None)
    exclude = serializers.ListField(child=serializers.IntegerField(), required=False, default=list)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class AILabelerSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=41, help_text="The labeler's account becomes ai-<name>@<project slug>: "
                                                          "names are per project.")
    kind = serializers.ChoiceField(choices=AILabeler.Kind.choices)
    spec = serializers.CharField(max_length=500, help_text=(
        "utility: a registered utility name (GET /api/hooks/); reward_model: a reward artifact id of the project; "
        "llm_judge: a model artifact id of the project or a directory under the operator's model roots."))
    tie_threshold = serializers.FloatField(min_value=0, required=False, default=0.0)


class AILabelerRunSerializer(serializers.Serializer):
    labeler_id = serializers.IntegerField()
    max_prompts = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)


class SelectionSerializer(serializers.Serializer):
    round = serializers.IntegerField(min_value=1)
    strategy = serializers.ChoiceField(
        choices=SelectionRecord.Strategy.values, required=False, default=DEFAULT_STRATEGY,
        help_text="; ".join(f"{name}: {evidence}" for name, evidence in STRATEGY_EVIDENCE.items()))
    artifact_id = serializers.IntegerField(required=False, allow_null=True, default=None,
                                           help_text="Reward model artifact (uncertainty only).")
    seed = serializers.IntegerField(required=False, default=0)


def _labeler_row(labeler: AILabeler) -> dict:
    return {"id": labeler.pk, "username": labeler.user.username, "kind": labeler.kind, "spec": labeler.spec,
            "tie_threshold": labeler.tie_threshold}


def _selection_row(record: SelectionRecord) -> dict:
    return {"id": record.pk, "round": record.round.number, "strategy": record.strategy, "params": record.params,
            "order": record.order, "scores": record.scores, "can_act": record.params.get("can_act", True),
            "notes": record.params.get("notes", []), "created_at": record.created_at.isoformat()}


@extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Quality report (agreement, labelers, queue)",
               parameters=[OpenApiParameter("round", int, required=False),
                           OpenApiParameter("sources", str, enum=["human", "both"], default="human",
                                            description="rankings the figures include: human (default) or human + AI")])
@api_view(["GET"])
def quality(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    round_number = request.query_params.get("round")
    if round_number is not None and not round_number.isdigit():
        return error_response("round must be a number", "round")
    try:
        report = quality_report(project=project, round_number=int(round_number) if round_number else None,
                                sources=request.query_params.get("sources") or "human")
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response(report)


@extend_schema(request=SettingsSerializer, responses={200: SettingsSerializer, **ERRORS}, summary="Quality settings")
@api_view(["POST"])
def quality_settings(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(SettingsSerializer, request.data)
    if error:
        return error
    settings = quality_settings_update(project=project, **data)
    return Response(SettingsSerializer(settings).data)


@extend_schema(request=None, responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Write reliability weights")
@api_view(["POST"])
def quality_weights(request: Request, slug: str) -> Response:
    return Response({"weights": pair_weights_update(project=manageable_project(request, slug))})


@extend_schema(request=ExclusionSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Exclude a ranking from exports and training (or include it again)")
@api_view(["POST"])
def quality_exclusion(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(ExclusionSerializer, request.data)
    if error:
        return error
    try:
        if data["include"]:
            ranking_include(project=project, ranking_id=data["ranking_id"])
        else:
            ranking_exclude(project=project, ranking_id=data["ranking_id"], user=request.user, reason=data["reason"])
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response({"ranking_id": data["ranking_id"], "excluded": not data["include"]})


@extend_schema(request=GoldSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Make a prompt gold")
@api_view(["POST"])
def quality_gold(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(GoldSerializer, request.data)
    if error:
        return error
    try:
        gold = gold_set(prompt=prompt_get(project=project, prompt_id=data["prompt_id"]), tiers=data["tiers"], user=request.user)
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response({"prompt_id": gold.prompt_id, "tiers": gold.tiers})


@extend_schema(request=ReviewSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Close a prompt's review: adjudicate (tiers) or keep, excluding rankings")
@api_view(["POST"])
def quality_review(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(ReviewSerializer, request.data)
    if error:
        return error
    try:
        review = prompt_review(prompt=prompt_get(project=project, prompt_id=data["prompt_id"]), user=request.user,
                               tiers=data["tiers"], note=data["note"], exclude_ranking_ids=data["exclude"])
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response({"prompt_id": review.prompt_id, "status": review.status, "tiers": review.tiers})


@extend_schema(responses={(200, "application/x-ndjson"): OpenApiTypes.STR, **ERRORS},
               summary="Consensus per prompt (JSONL)")
@api_view(["GET"])
def quality_consensus(request: Request, slug: str):
    return consensus_jsonl(manageable_project(request, slug))


@extend_schema(request=AILabelerSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="List AI labelers (GET) or add / update one (POST)")
@api_view(["GET", "POST"])
def quality_ai_labelers(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    if request.method == "GET":
        return Response({"ai_labelers": [_labeler_row(labeler) for labeler in ai_labeler_list(project=project)],
                         "utility_hooks": hook_names(kind="utility")})
    data, error = validated(AILabelerSerializer, request.data)
    if error:
        return error
    try:
        labeler = model_services().ai_labeler_create(project=project, **data)
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response(_labeler_row(labeler))


@extend_schema(request=AILabelerRunSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Run an AI labeler over its open prompts (synchronous)")
@api_view(["POST"])
def quality_ai_labeler_run(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(AILabelerRunSerializer, request.data)
    if error:
        return error
    try:
        labeler = ai_labeler_get(project=project, labeler_id=data["labeler_id"])
        return Response(model_services().ai_labeler_run(labeler=labeler, max_prompts=data["max_prompts"]))
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)


@extend_schema(request=SelectionSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="List recorded selections (GET) or order a round's prompts by a strategy (POST)")
@api_view(["GET", "POST"])
def quality_selection(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    if request.method == "GET":
        records = selection_list(project=project, limit=100)
        return Response({"selections": [_selection_row(record) for record in records],
                         "default_strategy": DEFAULT_STRATEGY, "strategies": STRATEGY_EVIDENCE})
    data, error = validated(SelectionSerializer, request.data)
    if error:
        return error
    try:
        record = model_services().round_select(round_=round_get(project=project, number=data["round"]),
                                               strategy=data["strategy"],
                                               artifact_id=data["artifact_id"], seed=data["seed"], user=request.user)
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response(_selection_row(record))
