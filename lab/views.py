"""Pages of the arena: the arena list (researchers also create, close and read the leaderboard there) and the
blind voting page. Thin views: reads from ``lab.selectors``, writes through ``lab.services``; non-members get
404, labelers 403 on researcher actions.

The voting page is the same template for a full page and for htmx (partial ``arena-area``); a vote POST
answers with the next pair. Responses are untrusted: rendered by ``render_markdown`` into ``hx-disable`` boxes.
"""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import selectors
from annotation.errors import InvalidInput, NotAllowed
from annotation.services import MAX_TIME_SPENT_MS
from annotation.limits import json_loads_bounded, upload_lines
from annotation.rendering import render_markdown, render_messages
from lab import services as arena_service
from lab import selectors as lab_selectors
from lab.models import Arena
from training.disclosure import value_redact
from training.idempotency import idempotent_write, key_from_request

CHOICE_BUTTONS = [  # (choice, label, keys shown)
    ("left", "Left is better", ["←", "1"]),
    ("right", "Right is better", ["→", "2"]),
    ("tie", "Tie", ["t", "3"]),
    ("both_bad", "Both are bad", ["b", "4"]),
]


class ArenaCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    model_a = forms.TypedChoiceField(coerce=int, label="Checkpoint A")
    model_b = forms.TypedChoiceField(coerce=int, label="Checkpoint B")
    file = forms.FileField(required=False, label="Prompts (JSONL)",
                           help_text='One line per prompt: {"prompt": "…"} or {"messages": […]}, optionally with '
                                     '"response_a" and "response_b" already generated.')
    prompts = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}),
                              help_text="Or one prompt per line (responses are generated).")
    max_new_tokens = forms.IntegerField(required=False, min_value=1, max_value=4096, initial=64)
    temperature = forms.FloatField(required=False, min_value=0, max_value=5, initial=1.0)
    seed = forms.IntegerField(required=False, min_value=0, initial=0)

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        # policies and causal-LM bases only: a reward model cannot write responses
        choices = [(a.pk, f"{a.name} (#{a.pk}, {a.kind})") for a in lab_selectors.arena_generators(project=project)]
        self.fields["model_a"].choices = self.fields["model_b"].choices = choices


def _items_from_jsonl(upload) -> list:
    """The upload's JSON lines, streamed (at most MAX_UPLOAD_BYTES, each line at most IMPORT_MAX_LINE_BYTES)."""
    items = []
    lines = upload_lines(upload, max_line_bytes=settings.IMPORT_MAX_LINE_BYTES)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            items.append(json_loads_bounded(raw))
        except ValueError as exc:  # UnicodeDecodeError and JSONTooDeep included
            raise InvalidInput(f"not valid JSON ({exc})", location=f"line {number}") from exc
    return items


def _project(request: HttpRequest, slug: str, *, manage: bool = False):
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    if manage and not selectors.user_can_manage(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may do this.")
    return project


@login_required
@require_GET
def arena_index(request: HttpRequest, slug: str) -> HttpResponse:
    return _arena_page(request, _project(request, slug))


def _arena_page(request: HttpRequest, project, *, status: int = 200) -> HttpResponse:
    can_manage = selectors.user_can_manage(user=request.user, project=project)
    arenas = [{"arena": a, "done": a.my_vote_count, "total": a.pair_count, "left": a.pair_count - a.my_vote_count,
               "votes": a.vote_count,
               "error": a.summary.get("error", "") if request.user.is_superuser
               else value_redact(a.summary.get("error", ""))}  # server paths: admins only
              for a in lab_selectors.arena_list_with_counts(user=request.user, project=project)]
    context = {"project": project, "can_manage": can_manage, "arenas": arenas}
    if can_manage:
        context["form"] = ArenaCreateForm(project=project)
        context["leaderboard"] = lab_selectors.arena_leaderboard(project=project)
    return render(request, "lab/arena/index.html", context, status=status)


@login_required
@require_POST
def arena_create(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug, manage=True)
    form = ArenaCreateForm(request.POST, request.FILES, project=project)
    try:
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            raise InvalidInput(errors[0], location=field)
        data = form.cleaned_data
        if data["file"] is not None:
            items = _items_from_jsonl(data["file"])
        else:
            items = [line.strip() for line in data["prompts"].splitlines() if line.strip()]
        sampling = {k: data[k] for k in ("max_new_tokens", "temperature", "seed") if data[k] is not None}
        artifacts = lab_selectors.artifacts_by_id(ids=[data["model_a"], data["model_b"]])
        arena, replayed = idempotent_write(
            user=request.user, scope=f"arena_create:project {project.pk}", key=key_from_request(request),
            arguments=data, write=lambda: arena_service.arena_create(
                project=project, model_a=artifacts.get(data["model_a"]), model_b=artifacts.get(data["model_b"]),
                name=data["name"], items=items, sampling=sampling, user=request.user),
        )
    except InvalidInput as exc:  # the page again, 400 (413: upload too large); nothing was written
        messages.error(request, f"No arena created: {exc}")
        return _arena_page(request, project, status=getattr(exc, "status_code", 400))
    first = "This form was already submitted: " if replayed else ""
    if arena.status == Arena.Status.OPEN:
        messages.success(request, f"{first}Arena #{arena.pk} is open with {arena.summary.get('pairs', 0)} prompts.")
    else:
        messages.success(request, f"{first}Arena #{arena.pk} created: a worker is generating its responses "
                                  "(it opens for votes when they are written).")
    return redirect(reverse("lab:arena", args=[slug]))


@login_required
@require_POST
def arena_close(request: HttpRequest, slug: str, arena_id: int) -> HttpResponse:
    arena = lab_selectors.arena_get_for_user(user=request.user, slug=slug, arena_id=arena_id)
    try:
        arena = arena_service.arena_close(arena=arena, user=request.user, reopen=request.POST.get("reopen") == "1")
        messages.success(request, f"Arena #{arena.pk} is {arena.get_status_display().lower()}.")
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except InvalidInput as exc:
        messages.error(request, f"Nothing changed: {exc}")
    return redirect(reverse("lab:arena", args=[slug]))


def _vote_context(request: HttpRequest, arena: Arena, **extra) -> dict:
    pair = lab_selectors.arena_pair_next_for_voter(arena=arena, voter=request.user)
    context = {"project": arena.project, "arena": arena, "pair": pair, "choices": CHOICE_BUTTONS,
               "progress": lab_selectors.arena_progress_for_voter(arena=arena, voter=request.user), **extra}
    if pair is not None:
        texts = lab_selectors.arena_pair_texts(pair=pair)
        left, right = lab_selectors.arena_shown_order(pair=pair, voter=request.user)
        context.update(
            turns=render_messages(pair.prompt.messages),
            sides=[{"side": side, "sample_id": pk, "html": render_markdown(texts[pk])}
                   for side, pk in (("Left", left), ("Right", right))],
            left_id=left,
        )
    return context


def _int_field(request: HttpRequest, name: str) -> int:
    value = request.POST.get(name, "")
    if not value.strip().isdigit():
        raise InvalidInput(f"expected a number, got {value[:20]!r}", location=name)
    return int(value)


def _time_spent(request: HttpRequest) -> int:
    raw = request.POST.get("time_spent_ms", "").strip() or "0"
    if not raw.isdigit():
        raise InvalidInput(f"expected milliseconds, got {raw[:20]!r}", location="time_spent_ms")
    return min(int(raw), MAX_TIME_SPENT_MS)


@login_required
@require_http_methods(["GET", "POST"])
def arena_vote(request: HttpRequest, slug: str, arena_id: int) -> HttpResponse:
    """GET: the next pair for this voter. POST (pair, left, choice, time_spent_ms): record, then the next pair."""
    arena = lab_selectors.arena_get_for_user(user=request.user, slug=slug, arena_id=arena_id)
    template = "lab/arena/vote.html" + ("#arena-area" if request.htmx else "")
    if request.method == "GET":
        return render(request, template, _vote_context(request, arena))
    try:
        pair_id = _int_field(request, "pair")
        lab_selectors.arena_pair_require(arena=arena, pair_id=pair_id)
        arena_service.arena_vote(
            pair_id=pair_id, voter=request.user, choice=request.POST.get("choice", ""),
            left_sample_id=_int_field(request, "left"), time_spent_ms=_time_spent(request),
        )
    except NotAllowed as exc:
        raise Http404("No such pair.") from exc
    except InvalidInput as exc:
        return render(request, template, _vote_context(request, arena, error=exc), status=400)
    if not request.htmx:
        return redirect(reverse("lab:arena-vote", args=[slug, arena.pk]))
    return render(request, template, _vote_context(request, arena, notice="Vote saved."))
