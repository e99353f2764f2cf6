"""Writes for quality control: settings, gold prompts, exclusions, adjudication and reliability weights.

Each function is one transaction and idempotent (setting the same thing twice changes nothing); input is
validated before anything is written. Rankings are never deleted: an exclusion is a row that exports and
training snapshots leave out, and reliability lowers ``PairwiseComparison.weight`` instead.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from django.db import transaction

from annotation import ranking as ranking_rules
from annotation.errors import ImportRejected, InvalidInput
from annotation.limits import json_loads_bounded
from annotation.models import PairwiseComparison, Project, Prompt, Ranking
from annotation.quality.models import (
    GoldRanking, LabelerReliability, PromptReview, QualitySettings, RankingExclusion,
)
from annotation.quality.selectors import DEFAULT_SETTINGS, quality_report

MAX_REASON = 500
MAX_GOLD_LINE = 1 << 16


def quality_settings_update(*, project: Project, **values: float) -> QualitySettings:
    """Set any of gold_rate, review_threshold (both 0..1) and speed_ratio (0 < r ≤ 1)."""
    unknown = sorted(set(values) - set(DEFAULT_SETTINGS))
    if unknown:
        raise InvalidInput(f"unknown setting {unknown[0]!r}; expected {sorted(DEFAULT_SETTINGS)}", location=unknown[0])
    clean = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"must be a number, got {str(value)[:40]!r}", location=name)
        low_ok = value > 0 if name == "speed_ratio" else value >= 0
        if not (low_ok and value <= 1):
            raise InvalidInput(f"must be between 0 and 1, got {value}", location=name)
        clean[name] = float(value)
    with transaction.atomic():
        settings, _ = QualitySettings.objects.get_or_create(project=project)
        for name, value in clean.items():
            setattr(settings, name, value)
        settings.save()
    return settings


def _sample_ids(prompt: Prompt) -> list[int]:
    return list(prompt.samples.order_by("position").values_list("pk", flat=True))


def gold_set(*, prompt: Prompt, tiers: list[list[int]], user=None) -> GoldRanking:
    """Make the prompt gold with this known ranking (tiers of sample ids, best first); replaces an old one."""
    clean = ranking_rules.tiers_validate(tiers=tiers, sample_ids=_sample_ids(prompt))
    with transaction.atomic():
        gold, _ = GoldRanking.objects.update_or_create(prompt=prompt, defaults={"tiers": clean, "created_by": user})
        Prompt.objects.filter(pk=prompt.pk).update(is_gold=True)
    return gold


def _gold_line(project: Project, line_number: int, raw: bytes | str) -> tuple[Prompt, list[list[int]]] | None:
    where = f"line {line_number}"
    if len(raw) > MAX_GOLD_LINE:
        raise ImportRejected(f"line is longer than {MAX_GOLD_LINE} bytes", location=where)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json_loads_bounded(text) if text.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportRejected(f"not valid UTF-8 JSON ({exc})", location=where) from exc
    if data is None:
        return None
    if not isinstance(data, dict) or "ranking" not in data or not ({"prompt_id", "external_id"} & set(data)):
        raise ImportRejected('expected {"prompt_id" or "external_id", "ranking": [[response index, ...], ...]}',
                             location=where)
    prompts = Prompt.objects.filter(project=project)
    key = "prompt_id" if "prompt_id" in data else "external_id"
    prompt = prompts.filter(**{"pk" if key == "prompt_id" else key: data[key]}).first() if isinstance(
        data[key], (int, str)) and not isinstance(data[key], bool) else None
    if prompt is None:
        raise ImportRejected(f"project {project.slug} has no prompt with {key} {str(data[key])[:60]!r}", location=where)
    ids = _sample_ids(prompt)
    ranking = data["ranking"]
    if not isinstance(ranking, list) or not all(isinstance(t, list) for t in ranking):
        raise ImportRejected("ranking must be a list of tiers, each a list of response indices", location=where)
    try:
        tiers = [[ids[i] for i in tier] for tier in ranking]
    except (IndexError, TypeError) as exc:
        raise ImportRejected(f"response indices must be 0..{len(ids) - 1}", location=where) from exc
    try:
        return prompt, ranking_rules.tiers_validate(tiers=tiers, sample_ids=ids)
    except InvalidInput as exc:
        raise ImportRejected(exc.message, location=f"{where}: {exc.location}") from exc


def gold_import(*, project: Project, lines: Iterable[bytes | str], user=None) -> int:
    """Mark prompts gold from JSONL lines ``{"prompt_id": 12, "ranking": [[0], [2, 1], [3]]}`` (or
    ``"external_id"``); indices are response positions as imported. All or nothing: returns the count."""
    parsed = [item for n, raw in enumerate(lines, start=1) if (item := _gold_line(project, n, raw)) is not None]
    if not parsed:
        raise ImportRejected("the file has no gold rankings", location="line 1")
    with transaction.atomic():
        for prompt, tiers in parsed:
            gold_set(prompt=prompt, tiers=tiers, user=user)
    return len(parsed)


def _clean_reason(reason: object, *, required: bool) -> str:
    reason = reason.strip() if isinstance(reason, str) else ""
    if required and not reason:
        raise InvalidInput("please give a reason", location="reason")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is {len(reason)} characters; at most {MAX_REASON}", location="reason")
    return reason


def _ranking_of_project(*, project: Project, ranking_id: object) -> Ranking:
    ranking = Ranking.objects.filter(pk=ranking_id, prompt__project=project).first() if isinstance(
        ranking_id, int) and not isinstance(ranking_id, bool) else None
    if ranking is None:
        raise InvalidInput(f"project {project.slug} has no ranking {str(ranking_id)[:20]}", location="ranking")
    return ranking


def ranking_exclude(*, project: Project, ranking_id: int, user=None, reason: str) -> RankingExclusion:
    """Leave the ranking out of exports and training (it stays in the database); idempotent."""
    reason = _clean_reason(reason, required=True)
    with transaction.atomic():
        ranking = _ranking_of_project(project=project, ranking_id=ranking_id)
        exclusion, _ = RankingExclusion.objects.get_or_create(
            ranking=ranking, defaults={"reason": reason, "excluded_by": user}
        )
    return exclusion


def ranking_include(*, project: Project, ranking_id: int) -> None:
    """Undo an exclusion; idempotent."""
    with transaction.atomic():
        ranking = _ranking_of_project(project=project, ranking_id=ranking_id)
        RankingExclusion.objects.filter(ranking=ranking).delete()


def prompt_review(
    *, prompt: Prompt, user=None, tiers: list[list[int]] | None = None, note: str = "",
    exclude_ranking_ids: Iterable[int] = (),
) -> PromptReview:
    """Close a prompt's review: with ``tiers`` the researcher's ranking becomes its consensus (adjudicated),
    without it the labelers' rankings are kept; ``exclude_ranking_ids`` are excluded in the same step."""
    note = _clean_reason(note, required=False)
    clean = ranking_rules.tiers_validate(tiers=tiers, sample_ids=_sample_ids(prompt)) if tiers is not None else None
    exclude_ranking_ids = list(exclude_ranking_ids)
    own = set(prompt.rankings.values_list("pk", flat=True))
    foreign = [r for r in exclude_ranking_ids if r not in own]
    if foreign:
        raise InvalidInput(f"ranking {foreign[0]} is not a ranking of prompt {prompt.pk}", location="exclude")
    status = PromptReview.Status.ADJUDICATED if clean is not None else PromptReview.Status.KEPT
    with transaction.atomic():
        review, _ = PromptReview.objects.update_or_create(
            prompt=prompt, defaults={"status": status, "tiers": clean, "note": note, "reviewed_by": user}
        )
        for ranking_id in exclude_ranking_ids:
            RankingExclusion.objects.get_or_create(
                ranking_id=ranking_id, defaults={"reason": note or "excluded in review", "excluded_by": user}
            )
    return review


def pair_weights_update(*, project: Project) -> dict[str, float]:
    """Recompute every labeler's reliability (gold + leave-one-out consensus) and write the resulting weight
    to all pairs of their rankings. Returns ``{labeler: weight}``; running it twice changes nothing more.

    Consensus is weighted by the previous weights, so reliable labelers shape it more; the fixed point is
    reached in a few runs (one is enough in practice).
    """
    rows = quality_report(project=project)["labelers"]
    with transaction.atomic():
        for row in rows:
            LabelerReliability.objects.update_or_create(
                project=project, labeler_id=row["labeler_id"],
                defaults={key: row[key] for key in ("reliability", "weight", "gold_pairs", "gold_agreeing",
                                                    "consensus_pairs", "consensus_agreeing")},
            )
            PairwiseComparison.objects.filter(prompt__project=project, ranking__labeler_id=row["labeler_id"]).exclude(
                weight=row["weight"]).update(weight=row["weight"])
    return {row["labeler"]: row["weight"] for row in rows}
