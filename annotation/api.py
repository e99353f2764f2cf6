"""JSON API of the labelling app (session or basic auth), documented by drf-spectacular.

Same rules as the pages: objects are looked up through the selectors (non-members get 404, someone
else's assignment 404), researcher actions give labelers 403, and every rejected input is a 400
`{"error": message, "location": where}` with nothing written.
"""
from django.db.models import Count, Prefetch
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.api_helpers import ERRORS, error_response, manageable_project, validated
from annotation.errors import InvalidInput, NotAllowed
from annotation.forms import ExportForm
from annotation.importers import import_samples_from_file
from annotation.models import RankingEntry
from annotation.serializers import (
    AssignmentSerializer,
    ImportResultSerializer,
    ImportSerializer,
    ProjectDetailSerializer,
    ProjectSerializer,
    RankingSerializer,
    RankingSubmitSerializer,
    SkipSerializer,
)
from annotation.provenance import CHOICES as PROVENANCE_CHOICES
from annotation.views import export_response

@extend_schema(responses=ProjectSerializer(many=True), summary="Projects you belong to")
@api_view(["GET"])
def project_list(request: Request) -> Response:
    projects = selectors.project_list_for_user(user=request.user)
    return Response(ProjectSerializer(projects, many=True).data)


@extend_schema(responses={200: ProjectDetailSerializer, 404: ERRORS[404]}, summary="One project with progress")
@api_view(["GET"])
def project_detail(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    project.role = selectors.user_role(user=request.user, project=project)
    project.can_manage = selectors.user_can_manage(user=request.user, project=project)
    project.progress = selectors.project_progress(project=project)
    project.mine = selectors.labeler_progress(project=project, labeler=request.user)
    return Response(ProjectDetailSerializer(project).data)


@extend_schema(
    request=None,
    responses={200: AssignmentSerializer, 204: OpenApiResponse(description="Nothing left to rank."), **ERRORS},
    summary="Lease the next prompt to rank (or get your current lease)",
)
@api_view(["POST"])
def assignment_next(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    try:
        assignment = services.assignment_next_for_labeler(project=project, labeler=request.user)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    if assignment is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(AssignmentSerializer(assignment).data)


def _own_assignment(request: Request, assignment_id: int):
    assignment = selectors.assignment_get_for_labeler(assignment_id=assignment_id, labeler=request.user)
    selectors.project_get_for_user(user=request.user, slug=assignment.prompt.project.slug)  # still a member
    return assignment


@extend_schema(request=RankingSubmitSerializer, responses={200: RankingSerializer, **ERRORS},
               summary="Submit your ranking of a leased prompt (idempotent)")
@api_view(["POST"])
def assignment_ranking(request: Request, assignment_id: int) -> Response:
    assignment = _own_assignment(request, assignment_id)
    data, error = validated(RankingSubmitSerializer, request.data)
    if error:
        return error
    try:
        ranking = services.ranking_submit(
            assignment_id=assignment.pk, labeler=request.user, tiers=data["tiers"],
            flags=data.get("flags") or {}, time_spent_ms=data["time_spent_ms"],
            comment=data["comment"], all_bad=data["all_bad"],
        )
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    return Response(RankingSerializer(ranking).data)


@extend_schema(request=SkipSerializer, responses={200: AssignmentSerializer, **ERRORS},
               summary="Skip a leased prompt with a reason")
@api_view(["POST"])
def assignment_skip(request: Request, assignment_id: int) -> Response:
    assignment = _own_assignment(request, assignment_id)
    data, error = validated(SkipSerializer, request.data)
    if error:
        return error
    try:
        assignment = services.assignment_skip(assignment_id=assignment.pk, labeler=request.user, reason=data["reason"])
    except InvalidInput as exc:  # 409 when the lease's slot went to another labeler
        return error_response(exc.message, exc.location, status_code=getattr(exc, "status_code", 400))
    return Response(AssignmentSerializer(assignment).data)


@extend_schema(request={"multipart/form-data": ImportSerializer}, responses={201: ImportResultSerializer, **ERRORS},
               summary="Import a JSONL file of samples as a new round (researchers)")
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
def project_import(request: Request, slug: str) -> Response:
    project = manageable_project(request, slug)
    data, error = validated(ImportSerializer, request.data)
    if error:
        return error
    upload = data["file"]
    try:
        result = import_samples_from_file(project_slug=project.slug, stream=upload, user=request.user,
                                          source_name=upload.name[:200], round_number=data.get("round"))
    except InvalidInput as exc:
        return error_response(exc.message, exc.location)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    code = status.HTTP_200_OK if result.already_imported else status.HTTP_201_CREATED
    return Response(ImportResultSerializer(result).data, status=code)


class _IgnoreFormatParameter(DefaultContentNegotiation):
    """`?format=` names the export format here, not a DRF renderer. Parsers are still chosen by content type
    (always taking the first, JSON, turned a form POST into a 400 "JSON parse error" instead of 403/405)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ProjectExport(APIView):
    content_negotiation_class = _IgnoreFormatParameter

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=["pairs", "conversational", "rankings"], default="pairs"),
            OpenApiParameter("file_format", str, enum=["jsonl", "parquet"], default="jsonl"),
            OpenApiParameter("round", int, required=False),
            OpenApiParameter("sources", str, enum=list(PROVENANCE_CHOICES), default="human",
                             description="human (default) | ai | both | weighted | arena; see docs/quality.md"),
            OpenApiParameter("include_arena", bool, default=False, description="add arena votes to the choice"),
            OpenApiParameter("ai_weight", float, required=False, description="weighted only: AI pair weight factor, "
                             "in (0, 1], default 0.5"),
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.BINARY,
                   (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY, **ERRORS},
        summary="Download preferences (researchers)",
    )
    def get(self, request: Request, slug: str) -> HttpResponse:
        project = manageable_project(request, slug)
        form = ExportForm(request.query_params)
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            return error_response(errors[0], field)
        fmt, file_format, round_number = (form.cleaned_data[k] for k in ("format", "file_format", "round"))
        try:
            return export_response(project=project, fmt=fmt, file_format=file_format, round_number=round_number,
                                   selection=form.cleaned_data["selection"])
        except InvalidInput as exc:
            return error_response(exc.message, exc.location)


@extend_schema(summary="Rankings of a project (labelers: only their own)", responses={200: RankingSerializer(many=True)})
class RankingList(generics.ListAPIView):
    serializer_class = RankingSerializer
    pagination_class = LimitOffsetPagination
    filter_backends: list = []  # no query-string filters, so nothing can reach through relations

    def get_queryset(self):
        project = selectors.project_get_for_user(user=self.request.user, slug=self.kwargs["slug"])
        return (
            selectors.ranking_list_for_user(user=self.request.user, project=project)
            .annotate(n_pairs=Count("pairs", distinct=True))
            .prefetch_related(Prefetch("entries", queryset=RankingEntry.objects.order_by("tier", "shown_position")))
        )


@extend_schema(responses=OpenApiTypes.OBJECT, summary="The operator's code hooks, by kind (names only)")
@api_view(["GET"])
def hook_list(request: Request) -> Response:
    """Names a user may choose: AI labeler utilities, PPO/GRPO reward functions, policy task checks."""
    from annotation.hooks import HOOK_KINDS, hook_names

    return Response({kind: hook_names(kind=kind) for kind in HOOK_KINDS})
