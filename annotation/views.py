"""Pages of the labelling app: thin function views over selectors and services.

An htmx request gets a named partial of the same template (django-template-partials); a plain request
the whole page, so every page also works from a real link. Permission checks go through the selectors:
non-members get 404, labelers get 403 on researcher actions.
"""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST

from annotation import selectors, services
from annotation.errors import ImportRejected, InvalidInput, NotAllowed
from annotation.exporters import export_filename, export_preferences, export_sources_header
from annotation.provenance import HUMAN_ONLY, SourceSelection
from annotation.forms import FLAG_CHOICES, ExportForm, ImportForm, SkipForm, ranking_payload_from_post
from annotation.importers import ImportResult, import_samples_from_file
from annotation.models import Assignment, Project, Round
from annotation.rendering import render_inline_excerpt, render_markdown, render_messages

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
EXPORT_CONTENT_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


def import_summary(result: ImportResult, *, name: str) -> str:
    if result.already_imported:
        return f"{name} was imported before (round {result.round_number}); nothing new was written."
    return (f"Imported {name} into round {result.round_number}: {result.prompts} prompts, {result.samples} "
            f"responses, {result.rankings} rankings, {result.pairs} pairs.")


def _template(request: HttpRequest, template: str, partial: str) -> str:
    return f"{template}#{partial}" if request.htmx else template


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    rows = [
        {
            "project": project,
            "progress": selectors.project_progress(project=project),
            "mine": selectors.labeler_progress(project=project, labeler=request.user),
            "role": selectors.user_role(user=request.user, project=project),
        }
        for project in selectors.project_list_for_user(user=request.user)
    ]
    return render(request, _template(request, "annotation/home.html", "project-list"), {"rows": rows})


def _project_context(request: HttpRequest, project: Project, **extra) -> dict:
    can_manage = selectors.user_can_manage(user=request.user, project=project)
    return {
        "project": project,
        "guidelines_html": render_markdown(project.guidelines),
        "progress": selectors.project_progress(project=project),
        "mine": selectors.labeler_progress(project=project, labeler=request.user),
        "role": selectors.user_role(user=request.user, project=project),
        "can_manage": can_manage,
        "recent_rankings": selectors.rankings_recent_of_labeler(user=request.user, project=project),
        "import_form": ImportForm() if can_manage else None,
        "export_form": ExportForm() if can_manage else None,
        **extra,
    }


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    context = _project_context(request, project)
    return render(request, _template(request, "annotation/project_detail.html", "progress"), context)


def _label_context(request: HttpRequest, project: Project, assignment: Assignment | None, **extra) -> dict:
    editing = extra.pop("editing", None)  # the Ranking being corrected ("Undo / edit last"), else None
    last = selectors.ranking_last_for_labeler(project=project, labeler=request.user)
    context = {
        "editing": editing,
        "can_edit_last": editing is None and last is not None and last.prompt.round.status == Round.Status.OPEN,
        "project": project,
        "assignment": assignment,
        "guidelines_html": render_markdown(project.guidelines),
        "mine": selectors.labeler_progress(project=project, labeler=request.user),
        "progress": selectors.project_progress(project=project),
        "skip_form": extra.pop("skip_form", None) or SkipForm(),
        "flag_choices": FLAG_CHOICES,
        **extra,
    }
    if assignment is not None:
        samples, entries = selectors.label_page_items(assignment=assignment, editing=editing)
        responses = [
            {"id": sample_id, "letter": LETTERS[i % 26], "html": render_markdown(samples[sample_id].text),
             "excerpt": " ".join(samples[sample_id].text.split())[:90],
             "excerpt_html": render_inline_excerpt(samples[sample_id].text),
             "flags": entries[sample_id].flags if sample_id in entries else [],
             "rank": entries[sample_id].tier + 1 if sample_id in entries else None}
            for i, sample_id in enumerate(assignment.shown_order)
        ]
        context.update(
            turns=render_messages(assignment.prompt.messages),
            responses=responses,
            ranks=range(1, len(responses) + 1),
            board={"assignment": assignment.pk, "k": len(responses),
                   "samples": [{"id": r["id"], "letter": r["letter"], "excerpt": r["excerpt"]} for r in responses],
                   "initial": {str(sid): e.tier + 1 for sid, e in entries.items()}},
        )
    return context


def _label_response(request: HttpRequest, project: Project, *, status: int = 200, **extra) -> HttpResponse:
    """The labelling page (or its `label-area` partial) for the labeler's next assignment."""
    assignment = extra.pop("assignment", None)
    if assignment is None:
        try:
            assignment = services.assignment_next_for_labeler(project=project, labeler=request.user)
        except NotAllowed as exc:
            raise PermissionDenied(str(exc)) from exc
    context = _label_context(request, project, assignment, **extra)
    return render(request, _template(request, "annotation/label.html", "label-area"), context, status=status)


@login_required
@require_GET
def label(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    return _label_response(request, project)


def _own_assignment(request: HttpRequest, assignment_id: int) -> tuple[Assignment, Project]:
    """The caller's assignment and its project, re-checking membership (404 for anyone else's)."""
    assignment = selectors.assignment_get_for_labeler(assignment_id=assignment_id, labeler=request.user)
    project = selectors.project_get_for_user(user=request.user, slug=assignment.prompt.project.slug)
    return assignment, project


def _edit_response(request: HttpRequest, project: Project, *, status: int = 200, **extra) -> HttpResponse:
    """The labelling page on the labeler's last ranking, to correct or withdraw it; the next prompt's page
    with a message when there is none they may change."""
    last = selectors.ranking_last_for_labeler(project=project, labeler=request.user)
    if last is None or last.prompt.round.status != Round.Status.OPEN:
        return _label_response(request, project, status=status,
                               notice="You have no ranking in an open round to change.", **extra)
    return _label_response(request, project, status=status, assignment=last.assignment, editing=last, **extra)


@login_required
@require_GET
def label_edit_last(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    return _edit_response(request, project)


@login_required
@require_POST
def assignment_edit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment, project = _own_assignment(request, assignment_id)
    try:
        payload = ranking_payload_from_post(request.POST)
        services.ranking_replace(assignment_id=assignment.pk, labeler=request.user, **payload)
    except InvalidInput as exc:
        return _form_error(request, project, assignment, message=exc.message, location=exc.location, editing=True)
    if not request.htmx:
        return redirect("annotation:label", slug=project.slug)
    return _label_response(request, project, notice="Ranking corrected.")


@login_required
@require_POST
def assignment_withdraw(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment, project = _own_assignment(request, assignment_id)
    try:
        services.ranking_withdraw(assignment_id=assignment.pk, labeler=request.user)
    except InvalidInput as exc:
        return _form_error(request, project, assignment, message=exc.message, location=exc.location, editing=True)
    if not request.htmx:
        return redirect("annotation:label", slug=project.slug)
    return _label_response(request, project, notice="Ranking withdrawn; the prompt goes back to other labelers.")


def _form_error(request: HttpRequest, project: Project, assignment: Assignment, *, message: str,
                location: str = "", skip_form: SkipForm | None = None, skip: bool = False,
                editing: bool = False, status: int = 400) -> HttpResponse:
    """400 (409: the lease was lost) with the reason. htmx swaps the error box by the control (the skip
    panel's for a skip) and puts the message in place of the previous notice ("Ranking saved." would
    contradict it); a plain POST re-renders the same assignment."""
    error = {"message": message, "location": location}
    box = "skip-error" if skip else "form-error"
    if request.htmx:
        context = {"error": error, "skip_error": error}
        html = (render_to_string(f"annotation/label.html#{box}", context, request)
                + render_to_string("annotation/label.html#notice-oob", context, request))
        response = HttpResponse(html, status=status)
        response["HX-Retarget"] = f"#{box}"
        response["HX-Reswap"] = "innerHTML"
        return response
    extra = {"skip_error": error} if skip else {"error": error}
    if editing:
        return _edit_response(request, project, status=status, **extra)
    return _label_response(request, project, status=status, assignment=assignment, skip_form=skip_form, **extra)


@login_required
@require_POST
def assignment_submit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment, project = _own_assignment(request, assignment_id)
    try:
        payload = ranking_payload_from_post(request.POST)
        services.ranking_submit(assignment_id=assignment.pk, labeler=request.user, **payload)
    except InvalidInput as exc:
        return _form_error(request, project, assignment, message=exc.message, location=exc.location)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    if not request.htmx:
        return redirect("annotation:label", slug=project.slug)
    return _label_response(request, project, notice="Ranking saved.")


@login_required
@require_POST
def assignment_skip(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment, project = _own_assignment(request, assignment_id)
    form = SkipForm(request.POST)
    if not form.is_valid():
        first = next(iter(form.errors.items()))
        location = "" if first[0] == "__all__" else first[0]
        return _form_error(request, project, assignment, message=first[1][0], location=location, skip_form=form,
                           skip=True)
    try:
        services.assignment_skip(assignment_id=assignment.pk, labeler=request.user, reason=form.cleaned_data["text"])
    except InvalidInput as exc:
        return _form_error(request, project, assignment, message=exc.message, location=exc.location, skip=True,
                           status=getattr(exc, "status_code", 400))
    if not request.htmx:
        return redirect("annotation:label", slug=project.slug)
    return _label_response(request, project, notice="Prompt skipped.")


@login_required
@require_POST
def project_import(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    selectors.user_require_manage(user=request.user, project=project)
    form = ImportForm(request.POST, request.FILES)
    error = None
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            result = import_samples_from_file(
                project_slug=project.slug, stream=upload, user=request.user, source_name=upload.name[:200],
                round_number=form.cleaned_data["round_number"],
            )
        except ImportRejected as exc:
            error = {"message": exc.message, "location": exc.location}
        except NotAllowed as exc:
            raise PermissionDenied(str(exc)) from exc
        else:
            messages.success(request, import_summary(result, name=upload.name))
            return redirect("annotation:project", slug=project.slug)
    else:
        field, errors = next(iter(form.errors.items()))
        error = {"message": errors[0], "location": field}
    context = _project_context(request, project, import_form=form, import_error=error)
    return render(request, "annotation/project_detail.html", context, status=400)


@login_required
@require_GET
def project_export(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    selectors.user_require_manage(user=request.user, project=project)
    form = ExportForm(request.GET)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        return HttpResponse(f"{field}: {errors[0]}", status=400, content_type="text/plain; charset=utf-8")
    fmt, file_format, round_number = (form.cleaned_data[k] for k in ("format", "file_format", "round"))
    try:
        return export_response(project=project, fmt=fmt, file_format=file_format, round_number=round_number,
                               selection=form.cleaned_data["selection"])
    except InvalidInput as exc:
        return HttpResponse(f"{exc.location}: {exc.message}", status=400, content_type="text/plain; charset=utf-8")


def export_response(*, project: Project, fmt: str, file_format: str, round_number: int | None,
                    selection: SourceSelection = HUMAN_ONLY) -> StreamingHttpResponse:
    """A streamed download of the project's preferences (arguments are checked before the first byte); the
    ``X-Export-Sources`` header says which ranking sources it includes."""
    chunks = export_preferences(project=project, fmt=fmt, file_format=file_format, round_number=round_number,
                                selection=selection)
    response = StreamingHttpResponse(chunks, content_type=EXPORT_CONTENT_TYPES[file_format])
    response["X-Export-Sources"] = export_sources_header(selection)
    name = export_filename(project=project, fmt=fmt, file_format=file_format, round_number=round_number)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response

