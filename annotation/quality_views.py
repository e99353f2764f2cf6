"""Pages of quality control (researchers and admins only): the report, the review queue and their actions.

Thin views: reads from ``quality_selectors``, writes through ``quality_services``; every POST redirects back
to the page (post/redirect/get) with a message saying what happened or what was wrong.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation import selectors
from annotation.hooks import hook_names
from annotation.errors import InvalidInput
from annotation.extensions import model_services, model_services_or_none
from annotation.limits import upload_lines
from annotation.models import Prompt, Ranking, Round
from annotation.quality_models import AILabeler, SelectionRecord
from annotation.quality_selectors import consensus_rows, flagged_responses, quality_report
from annotation.quality_services import (
    MAX_GOLD_LINE, gold_import, pair_weights_update, prompt_review, quality_settings_update, ranking_exclude,
    ranking_include,
)
from annotation.services import ranking_tiers

REVIEW_SHOWN = 10


def _managed_project(request: HttpRequest, slug: str):
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    selectors.user_require_manage(user=request.user, project=project)
    return project


def _back(slug: str, anchor: str = "") -> HttpResponse:
    return redirect(reverse("annotation:quality", args=[slug]) + anchor)


def _review_items(project, queue: list[dict]) -> list[dict]:
    """The first queued prompts with their rankings: tiers as response positions (A, B, ...)."""
    items = []
    for row in queue[:REVIEW_SHOWN]:
        prompt = Prompt.objects.get(pk=row["prompt_id"])
        letters = {pk: chr(ord("A") + pos) for pk, pos in prompt.samples.values_list("pk", "position")}
        rankings = Ranking.objects.filter(prompt=prompt, exclusion__isnull=True).select_related("labeler")
        items.append({
            **row, "prompt": prompt, "samples": prompt.samples.order_by("position"),
            "rankings": [{"ranking": r, "order": " > ".join(" = ".join(letters[s] for s in tier)
                                                             for tier in ranking_tiers(ranking=r))}
                         for r in rankings],
        })
    return items


def _with_top_scores(records) -> list:
    """Selection records with ``top_scores``: (prompt id, score) of the first 50 prompts in queue order."""
    records = list(records)
    for record in records:
        record.top_scores = [(pk, record.scores.get(str(pk))) for pk in record.order[:50]]
    return records


@login_required
@require_GET
def quality_page(request: HttpRequest, slug: str) -> HttpResponse:
    return _render_page(request, _managed_project(request, slug))


def _render_page(request: HttpRequest, project, status: int = 200) -> HttpResponse:
    sources = "both" if request.GET.get("sources") == "both" else "human"
    report = quality_report(project=project, sources=sources)
    chart = {"day": report["timeline"]["day"], "agreement": report["timeline"]["pairwise_agreement"]}
    return render(request, "annotation/quality/report.html", {
        "project": project, "report": report, "chart": chart,
        "review_items": _review_items(project, report["review_queue"]),
        "excluded": Ranking.objects.filter(prompt__project=project, exclusion__isnull=False)
        .select_related("labeler", "exclusion").order_by("-exclusion__created_at")[:50],
        "ai_labelers": AILabeler.objects.filter(project=project).select_related("user").order_by("user__username"),
        "ai_kinds": AILabeler.Kind.choices, "strategies": SelectionRecord.Strategy.values,
        "utility_hooks": hook_names(kind="utility"),
        "rounds": Round.objects.filter(project=project).order_by("number"),
        "selections": _with_top_scores(SelectionRecord.objects.filter(round__project=project)
                                       .select_related("round", "created_by").order_by("-created_at")[:20]),
        "flagged": flagged_responses(project=project),
        "reward_artifacts": _reward_artifacts(project),
    }, status=status)


def _reward_artifacts(project):
    """The project's reward models, newest first, for the uncertainty strategy's select (from the lab app)."""
    services = model_services_or_none()
    return services.reward_models(project=project) if services else []


def _rejected(request: HttpRequest, project, prefix: str, exc: InvalidInput) -> HttpResponse:
    """Bad input: the page again with status 400 (413 for an oversized upload) and the message (nothing was
    written)."""
    messages.error(request, f"{prefix}: {exc}")
    return _render_page(request, project, status=getattr(exc, "status_code", 400))


def _float_or_none(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise InvalidInput(f"must be a number, got {value[:40]!r}", location=name) from exc


@login_required
@require_POST
def quality_settings(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    try:
        values = {name: _float_or_none(request.POST.get(name), name)
                  for name in ("gold_rate", "review_threshold", "speed_ratio")}
        quality_settings_update(project=project, **values)
        messages.success(request, "Quality settings saved.")
    except InvalidInput as exc:
        messages.error(request, f"Settings not saved: {exc}")
    return _back(slug, "#settings")


@login_required
@require_POST
def quality_weights(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    weights = pair_weights_update(project=project)
    messages.success(request, f"Reliability weights written to the pairs of {len(weights)} labelers.")
    return _back(slug, "#labelers")


def _int(value: str | None, name: str) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidInput(f"expected a number, got {str(value)[:20]!r}", location=name)
    return int(value)


@login_required
@require_POST
def quality_exclusion(request: HttpRequest, slug: str) -> HttpResponse:
    """action=exclude (with a reason) or action=include for one ranking."""
    project = _managed_project(request, slug)
    try:
        ranking_id = _int(request.POST.get("ranking_id"), "ranking_id")
        if request.POST.get("action") == "include":
            ranking_include(project=project, ranking_id=ranking_id)
            messages.success(request, f"Ranking {ranking_id} is included again.")
        else:
            ranking_exclude(project=project, ranking_id=ranking_id, user=request.user,
                            reason=request.POST.get("reason", ""))
            messages.success(request, f"Ranking {ranking_id} is excluded from exports and training.")
    except InvalidInput as exc:
        messages.error(request, f"Nothing changed: {exc}")
    return _back(slug, "#review")


@login_required
@require_POST
def quality_review(request: HttpRequest, slug: str, prompt_id: int) -> HttpResponse:
    """Adopt one ranking as the prompt's adjudicated consensus (or keep all), excluding the ticked ones."""
    project = _managed_project(request, slug)
    prompt = get_object_or_404(Prompt, pk=prompt_id, project=project)
    try:
        excluded = [_int(v, "exclude") for v in request.POST.getlist("exclude")]
        adopted = request.POST.get("adopt", "")
        tiers = None
        if adopted:
            ranking = Ranking.objects.filter(pk=_int(adopted, "adopt"), prompt=prompt).first()
            if ranking is None:
                raise InvalidInput("the adopted ranking is not a ranking of this prompt", location="adopt")
            tiers = ranking_tiers(ranking=ranking)
        prompt_review(prompt=prompt, user=request.user, tiers=tiers, note=request.POST.get("note", ""),
                      exclude_ranking_ids=excluded)
        messages.success(request, f"Prompt {prompt.pk} reviewed.")
    except InvalidInput as exc:
        messages.error(request, f"Review not saved: {exc}")
    return _back(slug, "#review")


@login_required
@require_POST
def quality_gold_import(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise InvalidInput("choose a JSONL file", location="file")
        count = gold_import(project=project, lines=upload_lines(upload, max_line_bytes=MAX_GOLD_LINE),
                            user=request.user)
    except InvalidInput as exc:
        return _rejected(request, project, "Nothing imported", exc)
    messages.success(request, f"{count} gold prompts set.")
    return _back(slug, "#gold")


def consensus_jsonl(project) -> StreamingHttpResponse:
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in consensus_rows(project=project))
    response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-consensus.jsonl"'
    return response


@login_required
@require_GET
def quality_consensus(request: HttpRequest, slug: str) -> StreamingHttpResponse:
    return consensus_jsonl(_managed_project(request, slug))


@login_required
@require_POST
def quality_ai_labeler_add(request: HttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    try:
        tie = _float_or_none(request.POST.get("tie_threshold"), "tie_threshold")
        labeler = model_services().ai_labeler_create(
            project=project, name=request.POST.get("name", "").strip(), kind=request.POST.get("kind", ""),
            spec=request.POST.get("spec", "").strip(), tie_threshold=tie or 0.0)
    except InvalidInput as exc:
        return _rejected(request, project, "AI labeler not saved", exc)
    messages.success(request, f"AI labeler {labeler.user.username} saved.")
    return _back(slug, "#ai-labelers")


@login_required
@require_POST
def quality_ai_labeler_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Rank every open prompt in the AI labeler's queue (synchronous: CPU scorers, seconds)."""
    project = _managed_project(request, slug)
    try:
        labeler = AILabeler.objects.filter(project=project, pk=_int(request.POST.get("labeler_id"), "labeler_id")).first()
        if labeler is None:
            raise InvalidInput("this project has no such AI labeler", location="labeler_id")
        result = model_services().ai_labeler_run(labeler=labeler)
    except InvalidInput as exc:
        return _rejected(request, project, "AI labeler not run", exc)
    why = f" Nothing more to rank: {result['reason']}." if result.get("reason") else ""
    messages.success(request,
                     f"{result['labeler']} ranked {result['rankings']} prompts ({result['pairs']} pairs).{why}")
    return _back(slug, "#ai-labelers")


@login_required
@require_POST
def quality_selection(request: HttpRequest, slug: str) -> HttpResponse:
    """Order a round's prompts by a selection strategy (random, uncertainty, disagreement) and record it."""
    project = _managed_project(request, slug)
    try:
        number = _int(request.POST.get("round"), "round")
        round_ = Round.objects.filter(project=project, number=number).first()
        if round_ is None:
            raise InvalidInput(f"project {project.slug} has no round {number}", location="round")
        artifact = request.POST.get("artifact_id", "").strip()
        record = model_services().round_select(round_=round_, strategy=request.POST.get("strategy", ""),
                                               user=request.user,
                                               artifact_id=_int(artifact, "artifact_id") if artifact else None)
    except InvalidInput as exc:
        return _rejected(request, project, "Selection not recorded", exc)
    notes = " ".join(record.params.get("notes", []))
    text = f"Round {number}: {len(record.order)} prompts ordered by {record.strategy}." + (f" {notes}" if notes else "")
    (messages.success if record.params.get("can_act", True) else messages.warning)(request, text)
    return _back(slug, "#selection")
