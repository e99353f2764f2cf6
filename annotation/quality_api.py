"""JSON API of quality control (researchers and admins): report, weights, exclusions, gold, review, consensus.

Same conventions as ``annotation/api.py``: non-members get 404, labelers 403, rejected input a 400
``{"error": message, "location": where}`` with nothing written.
"""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotation.api import ERRORS, _manageable_project, _validated, error_response
from annotation.errors import InvalidInput
from annotation.models import Prompt
from annotation.quality_selectors import quality_report
from annotation.quality_services import (
    gold_set, pair_weights_update, prompt_review, quality_settings_update, ranking_exclude, ranking_include,
)
from annotation.quality_views import consensus_jsonl

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


def _prompt(project, prompt_id: int) -> Prompt:
    prompt = Prompt.objects.filter(pk=prompt_id, project=project).first()
    if prompt is None:
        raise InvalidInput(f"project {project.slug} has no prompt {prompt_id}", location="prompt_id")
    return prompt


@extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Quality report (agreement, labelers, queue)")
@api_view(["GET"])
def quality(request: Request, slug: str) -> Response:
    project = _manageable_project(request, slug)
    round_number = request.query_params.get("round")
    if round_number is not None and not round_number.isdigit():
        return error_response("round must be a number", "round")
    return Response(quality_report(project=project, round_number=int(round_number) if round_number else None))


@extend_schema(request=SettingsSerializer, responses={200: SettingsSerializer, **ERRORS}, summary="Quality settings")
@api_view(["POST"])
def quality_settings(request: Request, slug: str) -> Response:
    project = _manageable_project(request, slug)
    data, error = _validated(SettingsSerializer, request.data)
    if error:
        return error
    settings = quality_settings_update(project=project, **data)
    return Response(SettingsSerializer(settings).data)


@extend_schema(request=None, responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Write reliability weights")
@api_view(["POST"])
def quality_weights(request: Request, slug: str) -> Response:
    return Response({"weights": pair_weights_update(project=_manageable_project(request, slug))})


@extend_schema(request=ExclusionSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Exclude a ranking from exports and training (or include it again)")
@api_view(["POST"])
def quality_exclusion(request: Request, slug: str) -> Response:
    project = _manageable_project(request, slug)
    data, error = _validated(ExclusionSerializer, request.data)
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
    project = _manageable_project(request, slug)
    data, error = _validated(GoldSerializer, request.data)
    if error:
        return error
    try:
        gold = gold_set(prompt=_prompt(project, data["prompt_id"]), tiers=data["tiers"], user=request.user)
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response({"prompt_id": gold.prompt_id, "tiers": gold.tiers})


@extend_schema(request=ReviewSerializer, responses={200: OpenApiTypes.OBJECT, **ERRORS},
               summary="Close a prompt's review: adjudicate (tiers) or keep, excluding rankings")
@api_view(["POST"])
def quality_review(request: Request, slug: str) -> Response:
    project = _manageable_project(request, slug)
    data, error = _validated(ReviewSerializer, request.data)
    if error:
        return error
    try:
        review = prompt_review(prompt=_prompt(project, data["prompt_id"]), user=request.user, tiers=data["tiers"],
                               note=data["note"], exclude_ranking_ids=data["exclude"])
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response({"prompt_id": review.prompt_id, "status": review.status, "tiers": review.tiers})


@extend_schema(responses={(200, "application/x-ndjson"): OpenApiTypes.STR, **ERRORS},
               summary="Consensus per prompt (JSONL)")
@api_view(["GET"])
def quality_consensus(request: Request, slug: str):
    return consensus_jsonl(_manageable_project(request, slug))
