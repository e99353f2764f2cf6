"""Pages of training runs: thin function views over training selectors and services.

The run page polls its status card with htmx every 2 s; once the run is terminal the card answers
HTTP 286, which tells htmx to stop polling. Charts are drawn by static JS (CSP: no inline scripts)
from the metrics JSON endpoint. Non-members get 404; labelers get 403 on a project's runs and 404 on a run
or model (they see no training). Server paths and tracebacks are shown to admins only
(``selectors.run_disclosed``).
"""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation.errors import InvalidInput, NotAllowed
from training import selectors, services
from training.forms import RewardRunForm
from training.artifact_paths import artifact_dir
from training.idempotency import idempotent_write, key_from_request
from training.models import TrainingRun

HTMX_STOP_POLLING = 286
CHART_KEYS = {  # metric series drawn on the run page, per kind
    "reward": ("loss", "accuracy"),
    "sft": ("loss",),
    "dpo": ("loss", "reward_accuracy", "margin", "chosen_reward", "rejected_reward"),
    "ppo": ("reward", "rm_score", "kl", "entropy", "value_loss", "clip_fraction"),
    "grpo": ("reward", "rm_score", "kl", "entropy", "clip_fraction"),
    "generate": ("prompts",),
}
HEALTH_CHART_KEYS = ("health_nll_rise", "health_eos_rate")  # the in-run health checks' (training.ml.health_watch)


def _chart_keys(run) -> tuple[str, ...]:
    keys = CHART_KEYS.get(run.kind, ("loss",))
    return keys + HEALTH_CHART_KEYS if run.config.get("health_every") else keys


@login_required
@require_http_methods(["GET", "POST"])
def project_runs(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    can_launch = selectors.user_can_launch(user=request.user, project=project)
    form, status = RewardRunForm(project=project), 200
    if request.method == "POST":
        if not can_launch:
            raise PermissionDenied("Only researchers of this project and admins may launch runs.")
        form = RewardRunForm(request.POST, project=project)
        if form.is_valid():
            try:
                run, replayed = idempotent_write(
                    user=request.user, scope=f"run_create:project {project.pk}", key=key_from_request(request),
                    arguments={"kind": TrainingRun.Kind.REWARD, **form.cleaned_data}, write=lambda: services.run_create(
                        project=project, kind=TrainingRun.Kind.REWARD, config=form.run_config(), user=request.user,
                        base_artifact=form.cleaned_data["base_artifact"], rounds=form.cleaned_data["rounds"],
                        sources=form.cleaned_data["selection"],
                    ),
                )
            except InvalidInput as error:
                form.add_error(None, f"{error.location}: {error.message}" if error.location else error.message)
            else:
                messages.success(request, f"This form was already submitted: run {run.pk}." if replayed
                                 else f"Run {run.pk} is queued.")
                return redirect("training:run_detail", run_id=run.pk)
        status = 400
    return _runs_page(request, project, form=form, can_launch=can_launch, status=status)


def _runs_page(request: HttpRequest, project, *, form, can_launch: bool, status: int = 200,
               build_error: str = "") -> HttpResponse:
    context = {
        "project": project, "can_launch": can_launch, "form": form, "build_error": build_error,
        "runs": selectors.run_list_for_project(project=project)[:100],
        "artifacts": selectors.artifact_list_for_project(project=project)[:100],
        "has_base_model": selectors.project_has_base_model(project=project),
    }
    return render(request, "training/project_runs.html", context, status=status)


@login_required
@require_POST
def base_models_build(request: HttpRequest, slug: str) -> HttpResponse:
    """Build the project's tiny base models (offline, seconds); a second post builds nothing."""
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    try:
        artifacts, built = services.base_models_ensure_tiny(project=project, user=request.user)
    except NotAllowed as error:
        raise PermissionDenied(str(error)) from error
    except InvalidInput as error:
        return _runs_page(request, project, form=RewardRunForm(project=project), can_launch=True, status=400,
                          build_error=error.message)
    names = ", ".join(artifact.name for artifact in artifacts)
    messages.success(request, f"Built the base models {names}." if built else f"The base models {names} exist already.")
    return redirect("training:project_runs", slug=project.slug)


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = selectors.run_get_for_user(user=request.user, run_id=run_id)
    context = {
        "run": run, "project": run.project, "progress": selectors.run_progress(run=run),
        "can_launch": selectors.user_can_launch(user=request.user, project=run.project),
        "artifact": getattr(run, "artifact", None), "chart_keys": _chart_keys(run),
        "shown": selectors.run_disclosed(run=run, user=request.user),
        "reference": selectors.run_reference(run=run, user=request.user),
    }
    if request.htmx:
        status = HTMX_STOP_POLLING if run.is_terminal else 200
        return render(request, "training/run_detail.html#status-card", context, status=status)
    return render(request, "training/run_detail.html", context)


@login_required
@require_GET
def run_metrics(request: HttpRequest, run_id: int) -> JsonResponse:
    run = selectors.run_get_for_user(user=request.user, run_id=run_id)
    return JsonResponse({"status": run.status, "series": selectors.run_metric_series(run=run)})


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = selectors.run_get_for_user(user=request.user, run_id=run_id)
    try:
        services.run_request_cancel(run_id=run.pk, user=request.user)
    except NotAllowed as error:
        raise PermissionDenied(str(error)) from error
    if run.is_terminal:  # a repeated cancel, or the run ended meanwhile: nothing to do
        messages.info(request, f"Run {run.pk} is already {run.get_status_display().lower()}.")
    elif run.cancel_requested:
        messages.info(request, "Cancel was already requested: the run stops at its next step.")
    else:
        messages.info(request, "Cancel requested: the run stops at its next step and keeps its last checkpoint.")
    return redirect("training:run_detail", run_id=run.pk)


@login_required
@require_GET
def artifact_detail(request: HttpRequest, artifact_id: int) -> HttpResponse:
    artifact = selectors.artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    return render(request, "training/artifact_detail.html", {
        "artifact": artifact, "project": artifact.project,
        "shown": selectors.artifact_disclosed(artifact=artifact, user=request.user),
    })


@login_required
@require_GET
def artifact_download(request: HttpRequest, artifact_id: int) -> HttpResponse:
    artifact = selectors.artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    return artifact_zip_response(artifact)


def artifact_zip_response(artifact) -> HttpResponse:
    try:
        folder = artifact_dir(artifact=artifact)
    except InvalidInput:  # a stored path outside ARTIFACT_ROOT (/etc, ../.., a symlink out) is never served
        return HttpResponse("The artifact's path is not allowed.", status=403, content_type="text/plain")
    if not folder.is_dir():
        return HttpResponse("The artifact's files are not on this server.", status=410, content_type="text/plain")
    response = StreamingHttpResponse(selectors.artifact_zip_chunks(artifact=artifact), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{artifact.project.slug}-artifact-{artifact.pk}.zip"'
    return response
