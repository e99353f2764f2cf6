"""Pages of quality control (researchers and admins only): the report, the review queue and their actions.

Thin views: reads from ``quality.selectors``, writes through ``quality.services`` (and the lab's model
services). Every POST goes through ``_post_action``: the managed project, one write, then back to the page
(post/redirect/get) with a message saying what happened or what was wrong; the AI labeler and selection
forms instead show the page again with status 400 when their input is rejected.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from collections.abc import Callable

from annotation import selectors
from annotation.errors import InvalidInput
from annotation.extensions import model_services, model_services_or_none
from annotation.hooks import hook_names
from annotation.limits import upload_lines
from annotation.quality.models import AILabeler, SelectionRecord
from annotation.quality.strategy_evidence import DEFAULT_STRATEGY, STRATEGY_EVIDENCE
from annotation.quality.selectors import (
    ai_labeler_get, ai_labeler_list, consensus_rows, flagged_responses, prompt_get, quality_report, ranking_of_prompt_tiers,
    rankings_excluded, review_items, round_get, round_list, selection_list,
)
from annotation.quality.services import (
    MAX_GOLD_LINE, gold_import, pair_weights_update, prompt_review, quality_settings_update, ranking_exclude,
    ranking_include,
)

REVIEW_SHOWN = 10
Outcome = str | tuple[int, str]  # a success message, or (message level, text)


def _managed_project(request: HttpRequest, slug: str):
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    selectors.user_require_manage(user=request.user, project=project)
    return project


def _post_action(request: HttpRequest, slug: str, action: Callable[..., Outcome], *, anchor: str, failure: str,
                 show_page_on_error: bool = False) -> HttpResponse:
    """The skeleton of every POST of the page: ``action(project)`` on the managed project says what it did;
    InvalidInput becomes "<failure>: <why>" with nothing written, and the page again with status 400 (413 for
    an oversized upload; ``show_page_on_error``, or any error that carries its own status) or the redirect back
    to its ``anchor``."""
    project = _managed_project(request, slug)
    try:
        outcome = action(project)
    except InvalidInput as exc:
        messages.error(request, f"{failure}: {exc}")
        if show_page_on_error or hasattr(exc, "status_code"):
            return _render_page(request, project, status=getattr(exc, "status_code", 400))
    else:
        level, text = outcome if isinstance(outcome, tuple) else (messages.SUCCESS, outcome)
        messages.add_message(request, level, text)
    return redirect(reverse("annotation:quality", args=[slug]) + anchor)


def _with_top_scores(records) -> list:
    """Selection records with ``top_scores``: (prompt id, score) of the first 50 prompts in queue order."""
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
        "review_items": review_items(project=project, queue=report["review_queue"], limit=REVIEW_SHOWN),
        "excluded": rankings_excluded(project=project, limit=50),
        "ai_labelers": ai_labeler_list(project=project),
        "ai_kinds": AILabeler.Kind.choices,
        "strategies": [(s, STRATEGY_EVIDENCE[s]) for s in SelectionRecord.Strategy.values],
        "default_strategy": DEFAULT_STRATEGY,
        "utility_hooks": hook_names(kind="utility"),
        "rounds": round_list(project=project),
        "selections": _with_top_scores(selection_list(project=project, limit=20)),
        "flagged": flagged_responses(project=project),
        "reward_artifacts": _reward_artifacts(project),
    }, status=status)


def _reward_artifacts(project):
    """The project's reward models, newest first, for the uncertainty strategy's select (from the lab app)."""
    services = model_services_or_none()
    return services.reward_models(project=project) if services else []


def _float_or_none(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise InvalidInput(f"must be a number, got {value[:40]!r}", location=name) from exc


def _int(value: str | None, name: str) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidInput(f"expected a number, got {str(value)[:20]!r}", location=name)
    return int(value)


@login_required
@require_POST
def quality_settings(request: HttpRequest, slug: str) -> HttpResponse:
    def save(project) -> Outcome:
        values = {name: _float_or_none(request.POST.get(name), name)
                  for name in ("gold_rate", "review_threshold", "speed_ratio")}
        quality_settings_update(project=project, **values)
        return "Quality settings saved."

    return _post_action(request, slug, save, anchor="#settings", failure="Settings not saved")


@login_required
@require_POST
def quality_weights(request: HttpRequest, slug: str) -> HttpResponse:
    def write(project) -> Outcome:
        return f"Reliability weights written to the pairs of {len(pair_weights_update(project=project))} labelers."

    return _post_action(request, slug, write, anchor="#labelers", failure="Weights not written")


@login_required
@require_POST
def quality_exclusion(request: HttpRequest, slug: str) -> HttpResponse:
    """action=exclude (with a reason) or action=include for one ranking."""
    def exclude_or_include(project) -> Outcome:
        ranking_id = _int(request.POST.get("ranking_id"), "ranking_id")
        if request.POST.get("action") == "include":
            ranking_include(project=project, ranking_id=ranking_id)
            return f"Ranking {ranking_id} is included again."
        ranking_exclude(project=project, ranking_id=ranking_id, user=request.user,
                        reason=request.POST.get("reason", ""))
        return f"Ranking {ranking_id} is excluded from exports and training."

    return _post_action(request, slug, exclude_or_include, anchor="#review", failure="Nothing changed")


@login_required
@require_POST
def quality_review(request: HttpRequest, slug: str, prompt_id: int) -> HttpResponse:
    """Adopt one ranking as the prompt's adjudicated consensus (or keep all), excluding the ticked ones."""
    def review(project) -> Outcome:
        try:
            prompt = prompt_get(project=project, prompt_id=prompt_id)
        except InvalidInput as exc:
            raise Http404(str(exc)) from exc
        excluded = [_int(v, "exclude") for v in request.POST.getlist("exclude")]
        adopted = request.POST.get("adopt", "")
        tiers = ranking_of_prompt_tiers(prompt=prompt, ranking_id=_int(adopted, "adopt")) if adopted else None
        prompt_review(prompt=prompt, user=request.user, tiers=tiers, note=request.POST.get("note", ""),
                      exclude_ranking_ids=excluded)
        return f"Prompt {prompt.pk} reviewed."

    return _post_action(request, slug, review, anchor="#review", failure="Review not saved")


@login_required
@require_POST
def quality_gold_import(request: HttpRequest, slug: str) -> HttpResponse:
    def import_gold(project) -> Outcome:
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput("choose a JSONL file", location="file")
        return f"{gold_import(project=project, lines=upload_lines(upload, max_line_bytes=MAX_GOLD_LINE), user=request.user)} gold prompts set."

    return _post_action(request, slug, import_gold, anchor="#gold", failure="Nothing imported",
                        show_page_on_error=True)


@login_required
@require_POST
def quality_ai_labeler_add(request: HttpRequest, slug: str) -> HttpResponse:
    def add(project) -> Outcome:
        tie = _float_or_none(request.POST.get("tie_threshold"), "tie_threshold")
        labeler = model_services().ai_labeler_create(
            project=project, name=request.POST.get("name", "").strip(), kind=request.POST.get("kind", ""),
            spec=request.POST.get("spec", "").strip(), tie_threshold=tie or 0.0)
        return f"AI labeler {labeler.user.username} saved."

    return _post_action(request, slug, add, anchor="#ai-labelers", failure="AI labeler not saved",
                        show_page_on_error=True)


@login_required
@require_POST
def quality_ai_labeler_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Rank every open prompt in the AI labeler's queue (synchronous: CPU scorers, seconds)."""
    def run(project) -> Outcome:
        labeler = ai_labeler_get(project=project, labeler_id=_int(request.POST.get("labeler_id"), "labeler_id"))
        result = model_services().ai_labeler_run(labeler=labeler)
        why = f" Nothing more to rank: {result['reason']}." if result.get("reason") else ""
        return f"{result['labeler']} ranked {result['rankings']} prompts ({result['pairs']} pairs).{why}"

    return _post_action(request, slug, run, anchor="#ai-labelers", failure="AI labeler not run",
                        show_page_on_error=True)


@login_required
@require_POST
def quality_selection(request: HttpRequest, slug: str) -> HttpResponse:
    """Order a round's prompts by a selection strategy (random, uncertainty, disagreement) and record it."""
    def select(project) -> Outcome:
        number = _int(request.POST.get("round"), "round")
        artifact = request.POST.get("artifact_id", "").strip()
        record = model_services().round_select(
            round_=round_get(project=project, number=number), strategy=request.POST.get("strategy", ""),
            user=request.user, artifact_id=_int(artifact, "artifact_id") if artifact else None)
        notes = " ".join(record.params.get("notes", []))
        text = f"Round {number}: {len(record.order)} prompts ordered by {record.strategy}."
        text += f" {notes}" if notes else ""
        return (messages.SUCCESS if record.params.get("can_act", True) else messages.WARNING), text

    return _post_action(request, slug, select, anchor="#selection", failure="Selection not recorded",
                        show_page_on_error=True)


def consensus_jsonl(project) -> StreamingHttpResponse:
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in consensus_rows(project=project))
    response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-consensus.jsonl"'
    return response


@login_required
@require_GET
def quality_consensus(request: HttpRequest, slug: str) -> StreamingHttpResponse:
    return consensus_jsonl(_managed_project(request, slug))
