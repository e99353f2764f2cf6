"""The project's loop page: rounds as a lineage, "start next round", policy runs and policy data import.

Thin views over ``training.selectors.project_lineage`` and the services in ``training.rounds``,
``training.services`` and ``training.policy_data``. Members see the page (others get 404); only
researchers and admins post (labelers get 403). A rejected form answers 400 and writes nothing. Every form
carries an idempotency key (``training/idempotency.py``): a double submit gets the first submit's result.
"""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation.errors import InvalidInput, NotAllowed
from annotation.limits import upload_lines
from training import selectors, services
from training.forms import PolicyDataForm, PolicyRunForm, StartRoundForm
from training.idempotency import idempotent_write, key_from_request
from training.policy_data import policy_data_import, policy_lines_parse, pool_prompts_sample
from training.rounds import round_start


def _page(request: HttpRequest, project, *, status: int = 200, **forms) -> HttpResponse:
    context = {
        "project": project, "lineage": selectors.project_lineage(project=project),
        "can_launch": selectors.user_can_launch(user=request.user, project=project),
        "start_form": forms.get("start_form") or StartRoundForm(project=project),
        "run_form": forms.get("run_form") or PolicyRunForm(project=project),
        "data_form": forms.get("data_form") or PolicyDataForm(),
        "pool_size": project.pool_prompts.count(), "demonstrations": project.demonstrations.count(),
    }
    return render(request, "training/lineage.html", context, status=status)


def _managed_project(request: HttpRequest, slug: str):
    project = selectors.project_get_for_training(user=request.user, slug=slug)
    if not selectors.user_can_launch(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may do this.")
    return project


def _form_error(form, error: InvalidInput) -> None:
    form.add_error(None, f"{error.location}: {error.message}" if error.location else error.message)


@login_required
@require_GET
def project_lineage(request: HttpRequest, slug: str) -> HttpResponse:
    return _page(request, selectors.project_get_for_training(user=request.user, slug=slug))


@login_required
@require_POST
def start_round(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    form = StartRoundForm(request.POST, request.FILES, project=project)
    if form.is_valid():
        def write():
            lines = form.prompt_lines()
            data = form.cleaned_data
            prompts = ([m for m, _ in policy_lines_parse(lines)] if lines is not None else
                       pool_prompts_sample(project=project, n=data["sample"], seed=data["seed"]))
            return round_start(project=project, policy_artifact=data["policy"], prompts=prompts,
                               sampling=form.sampling(), user=request.user,
                               health_override=data.get("health_override", ""))

        try:
            run, replayed = idempotent_write(user=request.user, scope=f"round_start:project {project.pk}",
                                             key=key_from_request(request), arguments=form.cleaned_data, write=write)
        except NotAllowed as error:
            raise PermissionDenied(str(error)) from error
        except InvalidInput as error:
            _form_error(form, error)
        else:
            first = "This form was already submitted: " if replayed else ""
            messages.success(request, f"{first}Round {run.round.number} is generating (run {run.pk}); it opens to "
                                      "labelers when the samples are written.")
            return redirect("training:project_lineage", slug=project.slug)
    return _page(request, project, status=400, start_form=form)


@login_required
@require_POST
def policy_run(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    form = PolicyRunForm(request.POST, project=project)
    if form.is_valid():
        data = form.cleaned_data
        try:
            run, replayed = idempotent_write(
                user=request.user, scope=f"run_create:project {project.pk}", key=key_from_request(request),
                arguments=data, write=lambda: services.run_create(
                    project=project, kind=data["kind"], config=data["config"], user=request.user,
                    base_artifact=data["policy"], reward_artifact=data.get("reward_artifact"), rounds=data["rounds"],
                    reference_artifact=data.get("reference_artifact"), sources=data["selection"]),
            )
        except NotAllowed as error:
            raise PermissionDenied(str(error)) from error
        except InvalidInput as error:
            _form_error(form, error)
        else:
            messages.success(request, f"This form was already submitted: run {run.pk}." if replayed
                             else f"Run {run.pk} is queued.")
            return redirect("training:run_detail", run_id=run.pk)
    return _page(request, project, status=400, run_form=form)


@login_required
@require_POST
def policy_data(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    form = PolicyDataForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            upload = form.cleaned_data["file"]  # streamed line by line, never read whole
            result = policy_data_import(project=project, source=upload.name, lines=upload_lines(
                upload, max_line_bytes=settings.IMPORT_MAX_LINE_BYTES))
        except InvalidInput as error:
            _form_error(form, error)
        else:
            messages.success(request, f"{result['demonstrations']} new demonstrations, "
                                      f"{result['pool_prompts']} new pool prompts.")
            return redirect("training:project_lineage", slug=project.slug)
    return _page(request, project, status=400, data_form=form)
