"""JSON API of training runs and artifacts (DRF, session or basic auth), thin over selectors and services.

Object-level authorization: non-members of the run's project get 404; labelers see no training (403 on a
project's runs, models, rounds and lineage, 404 on a run or model by id). Server paths and tracebacks in
a run's error, log and config are redacted for everyone but admins. Errors: 400 with
``{"error": message, "location": where}``.

Launching a run and starting a round take an optional ``Idempotency-Key`` header (``training/idempotency.py``):
a repeat with the same key answers 200 with the first request's run and ``Idempotent-Replayed: true``, and
writes nothing; the same key with a different body answers 422. Cancelling is idempotent by itself.
"""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from annotation.errors import InvalidInput, NotAllowed
from training import selectors, services
from training.idempotency import HEADER, KeyReused, idempotent_write, key_from_request
from training.policy_data import pool_prompts_sample
from training.rounds import round_start
from training.serializers import (
    ArtifactSerializer, RoundStartSerializer, RunCreateSerializer, RunDetailSerializer, RunSerializer,
)
from training.views import artifact_zip_response

ERROR = OpenApiResponse(description='{"error": message, "location": where}')
KEY_PARAMETER = OpenApiParameter(HEADER, str, OpenApiParameter.HEADER, required=False, description=(
    "A client key (at most 200 printable ASCII characters): a repeat returns the first result, writes nothing."))
IDEMPOTENT_RESPONSES = {
    200: OpenApiResponse(RunDetailSerializer, description="A repeat of an earlier request with the same key."),
    422: OpenApiResponse(description="The key was used before for a different request."),
}


def _error(message: str, location: str = "", *, code: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response({"error": message, "location": location}, status=code)


def _idempotent_run_response(request: Request, *, scope: str, arguments: dict, write,
                             type_errors_at: str | None = None) -> Response:
    """201 with the new run, or 200 with the first run for a repeated key; 400/422 on rejected input.
    ``type_errors_at``: where a TypeError of ``write`` comes from (a bad sampling value), else it propagates."""
    rejected = (InvalidInput, TypeError) if type_errors_at is not None else InvalidInput
    try:
        run, replayed = idempotent_write(user=request.user, scope=scope, key=key_from_request(request),
                                         arguments=arguments, write=write)
    except KeyReused as error:
        return _error(error.message, location=error.location, code=status.HTTP_422_UNPROCESSABLE_ENTITY)
    except rejected as error:
        return _error(getattr(error, "message", str(error)), location=getattr(error, "location", type_errors_at))
    if replayed:
        return Response(_run_detail(run, request), status=status.HTTP_200_OK, headers={"Idempotent-Replayed": "true"})
    return Response(_run_detail(run, request), status=status.HTTP_201_CREATED)


def _run_detail(run, request: Request) -> dict:
    return RunDetailSerializer(run, context={"user": request.user}).data


@extend_schema(methods=["GET"], responses=RunSerializer(many=True), summary="List the project's runs")
@extend_schema(methods=["POST"], request=RunCreateSerializer, parameters=[KEY_PARAMETER],
               responses={201: RunDetailSerializer, 400: ERROR, **IDEMPOTENT_RESPONSES},
               summary="Launch a training run (researchers and admins)")
@api_view(["GET", "POST"])
def project_runs(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    if request.method == "GET":
        return Response(RunSerializer(selectors.run_list_for_project(project=project)[:200], many=True,
                                      context={"user": request.user}).data)
    if not selectors.user_can_launch(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may launch runs.")
    serializer = RunCreateSerializer(data=request.data)
    if not serializer.is_valid():
        field, problems = next(iter(serializer.errors.items()))
        return _error(str(problems[0] if isinstance(problems, list) else problems), location=field)
    data = serializer.validated_data
    base = None
    if data.get("base_artifact") is not None:
        base = selectors.artifact_of_project(project=project, artifact_id=data["base_artifact"])
        if base is None:
            return _error("No such model in this project.", location="base_artifact")
    reward = None
    if data.get("reward_artifact") is not None:
        reward = selectors.artifact_of_project(project=project, artifact_id=data["reward_artifact"])
        if reward is None:
            return _error("No such model in this project.", location="reward_artifact")
    reference = None
    if data.get("reference_artifact") is not None:
        reference = selectors.artifact_of_project(project=project, artifact_id=data["reference_artifact"])
        if reference is None:
            return _error("No such model in this project.", location="reference_artifact")
    return _idempotent_run_response(
        request, scope=f"run_create:project {project.pk}", arguments=data,
        write=lambda: services.run_create(project=project, kind=data["kind"], config=data["config"], user=request.user,
                                          base_artifact=base, rounds=data.get("rounds"), reward_artifact=reward,
                                          reference_artifact=reference, sources=data["selection"]),
    )


@extend_schema(responses=RunDetailSerializer, summary="A run's status, progress, metric series and log tail")
@api_view(["GET"])
def run_detail(request: Request, run_id: int) -> Response:
    return Response(_run_detail(selectors.run_get_for_user(user=request.user, run_id=run_id), request))


@extend_schema(request=None, responses=RunDetailSerializer, summary="Cancel a run (stops at its next step)")
@api_view(["POST"])
def run_cancel(request: Request, run_id: int) -> Response:
    run = selectors.run_get_for_user(user=request.user, run_id=run_id)
    try:
        services.run_request_cancel(run_id=run.pk, user=request.user)
    except NotAllowed as error:
        raise PermissionDenied(str(error)) from error
    return Response(_run_detail(selectors.run_get_for_user(user=request.user, run_id=run_id), request))


@extend_schema(responses=ArtifactSerializer(many=True), summary="List the project's models")
@api_view(["GET"])
def project_artifacts(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    return Response(ArtifactSerializer(selectors.artifact_list_for_project(project=project)[:500], many=True,
                                       context={"user": request.user}).data)


@extend_schema(responses=ArtifactSerializer, summary="A model and its lineage")
@api_view(["GET"])
def artifact_detail(request: Request, artifact_id: int) -> Response:
    artifact = selectors.artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    return Response(ArtifactSerializer(artifact, context={"user": request.user}).data)


@extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY}, summary="Download a model as a zip")
@api_view(["GET"])
def artifact_download(request: Request, artifact_id: int):
    return artifact_zip_response(selectors.artifact_get_for_user(user=request.user, artifact_id=artifact_id))


@extend_schema(request=RoundStartSerializer, parameters=[KEY_PARAMETER],
               responses={201: RunDetailSerializer, 400: ERROR, **IDEMPOTENT_RESPONSES},
               summary="Start the next round: generate K samples per prompt from a policy, then open it")
@api_view(["POST"])
def project_rounds(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    if not selectors.user_can_launch(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may start rounds.")
    serializer = RoundStartSerializer(data=request.data)
    if not serializer.is_valid():
        field, problems = next(iter(serializer.errors.items()))
        return _error(str(problems[0] if isinstance(problems, list) else problems), location=field)
    data = serializer.validated_data
    policy = selectors.artifact_of_project(project=project, artifact_id=data["policy"])
    if policy is None:
        return _error("No such model in this project.", location="policy")
    sampling = data.get("sampling") or {}

    def write():
        prompts = data.get("prompts") or pool_prompts_sample(project=project, n=data["sample"],
                                                              seed=int(sampling.get("seed", 0) or 0))
        return round_start(project=project, policy_artifact=policy, prompts=prompts, sampling=sampling,
                           user=request.user, health_override=data.get("health_override", ""))

    return _idempotent_run_response(request, scope=f"round_start:project {project.pk}", arguments=data, write=write,
                                    type_errors_at="sampling")


@extend_schema(responses=OpenApiTypes.OBJECT, summary="Rounds as a lineage with their figures and runs")
@api_view(["GET"])
def project_lineage(request: Request, slug: str) -> Response:
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    return Response(selectors.lineage_as_json(lineage=selectors.project_lineage(project=project)))
