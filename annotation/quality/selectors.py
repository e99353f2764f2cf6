"""Reads for quality control: load a project's rankings once, then compute every figure from them
(``annotation.quality.figures``, over ``annotation.quality.metrics``).

``quality_report`` is what the quality page, the API and ``manage.py quality_report`` show:
agreement between labelers of the same prompt (pairwise agreement, Kendall's τ-b, Krippendorff's α
ordinal over mid-ranks) per project, round and labeler; agreement with gold and with the leave-one-out
Bradley-Terry consensus; the reliability and pair weight that follow from them; position bias; speed
flags; agreement per day (the plot); and the review queue of high-disagreement prompts.

Sources (``annotation/provenance.py``): every figure uses the human group by default (human, simulated,
imported and gold-prompt rankings; the simulated ones stand in for humans in demos and tests), and the
report says so in ``sources``. ``sources="both"`` adds AI-labeler rankings to the project, round, timeline
and review-queue figures. AI labelers always get a row of their own, measured against the humans only, and
never change a human's figures. Arena votes count nowhere here (they have the leaderboard); gold prompts
never enter the review queue. Rankings without a labeler (imported) count towards consensus but not towards
any labeler's figures. Excluded rankings count nowhere. The speed flag compares human rankings that have
timings only (simulated and AI rankings have none worth comparing).
"""
from __future__ import annotations

import random
from collections import Counter

import numpy as np

from django.db.models import Exists, OuterRef, Prefetch, Subquery

from annotation import provenance
from annotation.errors import InvalidInput
from annotation.models import Assignment, Project, Prompt, Ranking, RankingEntry, Round, Sample
from annotation.quality.models import (
    AILabeler, GoldRanking, LabelerReliability, PromptReview, QualitySettings, SelectionRecord,
)
from annotation.quality.array_figures import agreement_summaries, ranking_pairs
from annotation.quality.array_figures import review_queue as array_review_queue
from annotation.quality.array_figures import timeline as array_timeline
from annotation.quality.array_labelers import labeler_rows_weighted as array_labeler_rows
from annotation.quality.arrays import prompts_of
from annotation.quality.ranking_table import ranking_table
from annotation.quality.array_consensus import consensus_strengths, table_rows
from annotation.quality.figures import HUMAN_SOURCES, RankingRecord
from annotation.quality.metrics import tiers_from_strengths
from preferences.tiers import tier_map, tiers_from_map

AI_SOURCES = frozenset(provenance.AI_SOURCES)
QUALITY_SOURCES = {"human": HUMAN_SOURCES, "both": HUMAN_SOURCES | AI_SOURCES}
DEFAULT_SETTINGS = {"gold_rate": 0.0, "review_threshold": 0.5, "speed_ratio": 0.25}
DEFAULT_GOLD_RATE_WITH_GOLD = 0.1  # a project that never set its gold rate but has gold prompts uses this


def quality_settings_get(*, project) -> dict:
    """The project's settings; without a stored row the defaults, with gold rate 0.1 once it has gold prompts
    (so uploaded gold prompts are not silently withheld; a researcher's explicit 0 is kept and warned about)."""
    row = QualitySettings.objects.filter(project=project).values(*DEFAULT_SETTINGS).first()
    if row:
        return row
    return {**DEFAULT_SETTINGS, "gold_rate": _default_gold_rate(project=project)}


def _default_gold_rate(*, project) -> float:
    has_gold = GoldRanking.objects.filter(prompt__project=project).exists()
    return DEFAULT_GOLD_RATE_WITH_GOLD if has_gold else DEFAULT_SETTINGS["gold_rate"]


def quality_warnings(*, project, settings: dict, gold_prompts: int) -> list[str]:
    """Plain-language warnings for the quality page and API."""
    warnings = []
    if gold_prompts and settings["gold_rate"] <= 0:
        warnings.append(f"{gold_prompts} gold prompts are withheld from every labeler because the gold rate is 0: "
                        f"set a gold rate (e.g. {DEFAULT_GOLD_RATE_WITH_GOLD}) to mix them into the queues.")
    return warnings


def gold_turn_order(*, project, labeler) -> tuple[bool, ...]:
    """Which pools the labeler's next lease is drawn from: ``(True, False)`` (gold first, then the rest) on a
    gold turn, ``(False,)`` otherwise. A turn is gold with probability ``gold_rate``, drawn from an RNG seeded
    by (project, labeler, how many leases they had), so it is silent to the labeler yet reproducible.
    """
    stored, has_gold = Project.objects.filter(pk=project.pk).annotate(  # one query: stored rate, any gold
        stored=Subquery(QualitySettings.objects.filter(project=OuterRef("pk")).values("gold_rate")[:1]),
        has_gold=Exists(GoldRanking.objects.filter(prompt__project=OuterRef("pk"))),
    ).values_list("stored", "has_gold").first()
    rate = stored if stored is not None else (DEFAULT_GOLD_RATE_WITH_GOLD if has_gold else 0.0)
    if rate <= 0:
        return (False,)
    leases = Assignment.objects.filter(prompt__project=project, labeler=labeler).count()
    draw = random.Random(f"gold:{project.pk}:{labeler.pk}:{leases}").random()
    return (True, False) if draw < rate else (False,)


def ranking_records(*, project, round_number: int | None = None, include_excluded: bool = False) -> list[RankingRecord]:
    """Every ranking of the project (or one round) with its tiers and shown positions, in id order; arena votes
    are left out (they are checkpoint comparisons with their own leaderboard)."""
    rankings = Ranking.objects.filter(prompt__project=project).exclude(source__in=provenance.ARENA_SOURCES)
    if round_number is not None:
        rankings = rankings.filter(prompt__round__number=round_number)
    if not include_excluded:
        rankings = rankings.filter(exclusion__isnull=True)
    rows = rankings.order_by("id").values(
        "id", "prompt_id", "prompt__round__number", "labeler_id", "labeler__username", "source", "time_spent_ms",
        "created_at", "exclusion__id",
    )
    records = {
        r["id"]: RankingRecord(
            ranking_id=r["id"], prompt_id=r["prompt_id"], round_number=r["prompt__round__number"],
            labeler_id=r["labeler_id"], labeler=r["labeler__username"] or "(imported)", source=r["source"],
            tiers={}, shown={}, time_spent_ms=r["time_spent_ms"], created_at=r["created_at"],
            excluded=r["exclusion__id"] is not None,
        )
        for r in rows.iterator(chunk_size=2000)
    }
    entries = RankingEntry.objects.filter(ranking__in=rankings).values_list("ranking_id", "sample_id", "tier",
                                                                            "shown_position")
    for ranking_id, sample_id, tier, shown_position in entries.iterator(chunk_size=5000):
        records[ranking_id].tiers[sample_id] = tier
        records[ranking_id].shown[sample_id] = shown_position
    return list(records.values())


def gold_maps(*, project) -> dict[int, dict[int, int]]:
    """{prompt id: {sample id: tier}} of the project's gold prompts."""
    rows = GoldRanking.objects.filter(prompt__project=project).values_list("prompt_id", "tiers")
    return {prompt_id: tier_map(tiers) for prompt_id, tiers in rows}


def _weights_by_labeler(*, project) -> dict[int, float]:
    return dict(LabelerReliability.objects.filter(project=project).values_list("labeler_id", "weight"))


def quality_sources(sources: object) -> frozenset[str]:
    """The ranking sources of a quality choice: "human" (default) or "both" (human + AI); InvalidInput else."""
    if sources in (None, ""):
        sources = "human"
    if not isinstance(sources, str) or sources not in QUALITY_SOURCES:
        raise InvalidInput(f"unknown sources {str(sources)[:40]!r}; choose human or both", location="sources")
    return QUALITY_SOURCES[sources]


def quality_report(*, project, round_number: int | None = None, sources: str = "human") -> dict:
    """Every quality figure of the project (or one round) as plain JSON-ready data.

    ``sources``: "human" (default) or "both"; which rankings the project, round, timeline and review-queue
    figures include (stated in the result's ``sources``). Labeler rows: see the module docstring. Computed over
    arrays (``annotation.quality.array_figures``); the numbers are those of ``annotation.quality.figures``
    over ``ranking_records``, which the tests check."""
    included = quality_sources(sources)
    settings = quality_settings_get(project=project)
    table = ranking_table(project=project, round_number=round_number)
    prompts = prompts_of(table)
    pairs = ranking_pairs(prompts)
    members = table.source_in(included)
    gold = gold_maps(project=project)
    rounds = sorted(set(table.round_number[members].tolist()))
    reviewed = set(PromptReview.objects.filter(prompt__project=project).values_list("prompt_id", flat=True))
    overall, per_round = agreement_summaries(table, prompts, pairs, members, rounds)
    left_out = Counter(table.sources[s] for s in table.source[~members].tolist())
    return {
        "project": project.slug,
        "round": round_number,
        "sources": {"choice": sources or "human", "included_sources": sorted(included),
                    "left_out": dict(sorted(left_out.items()))},
        "settings": settings,
        "warnings": quality_warnings(project=project, settings=settings, gold_prompts=len(gold)),
        "excluded_rankings": Ranking.objects.filter(prompt__project=project, exclusion__isnull=False).count(),
        "gold_prompts": len(gold),
        "overall": overall,
        "rounds": [{"round": n, **summary} for n, summary in zip(rounds, per_round)],
        "labelers": array_labeler_rows(table, prompts, pairs, gold, settings),
        "timeline": array_timeline(table, pairs, members),
        "review_queue": array_review_queue(table, prompts, pairs, members, threshold=settings["review_threshold"],
                                           reviewed=reviewed, gold=set(gold)),
    }


def consensus_rows(*, project, round_number: int | None = None):
    """One row per prompt with rankings: BT strengths, consensus tiers (gold or adjudication wins), counts.
    Human rankings only (human, simulated, imported, gold-prompt): AI labels and arena votes are left out.

    Rankings are read as arrays and every prompt's Bradley-Terry fit runs with its block's
    (``array_consensus.consensus_strengths``); the rows are built as the prompts stream from the database.
    The numbers are those of ``figures.prompt_consensus`` one prompt at a time, to the printed 4 decimals."""
    table = ranking_table(project=project, round_number=round_number)
    human = table_rows(table, table.source_in(HUMAN_SOURCES))
    prompts = prompts_of(human)
    weights = _weights_by_labeler(project=project)
    labelers, of_row = np.unique(human.labeler_id, return_inverse=True)
    row_weight = np.array([weights.get(labeler, 1.0) for labeler in labelers.tolist()])[of_row.reshape(-1)]
    strengths = consensus_strengths(prompts, row_weight)
    gold = gold_maps(project=project)
    adjudicated = dict(PromptReview.objects.filter(prompt__project=project, status=PromptReview.Status.ADJUDICATED)
                       .values_list("prompt_id", "tiers"))
    block_of, place = np.zeros(len(prompts.ids), np.int64), np.zeros(len(prompts.ids), np.int64)
    for b, block in enumerate(prompts.blocks):
        block_of[block.prompts], place[block.prompts] = b, np.arange(len(block.prompts))
    if not len(prompts.ids):
        return
    # The project's prompts between the first and last ranked one, those without rankings skipped: 3.5x faster
    # to read than an IN list of every ranked id (55,556 at 1M pairs), where ranked prompts come in id order.
    rows = Prompt.objects.filter(project=project, pk__gte=int(prompts.ids[0]), pk__lte=int(prompts.ids[-1]))
    if round_number is not None:
        rows = rows.filter(round__number=round_number)
    for prompt_id, messages, number in rows.order_by("id").values_list("id", "messages", "round__number").iterator(
            chunk_size=500):
        index = int(np.searchsorted(prompts.ids, prompt_id))
        if index == len(prompts.ids) or prompts.ids[index] != prompt_id:
            continue  # no human ranking
        block, p = prompts.blocks[block_of[index]], place[index]
        by_sample = dict(zip(block.samples[p].tolist(), strengths[block_of[index]][p].tolist()))
        tiers, basis = tiers_from_strengths(by_sample), "bradley_terry"
        if prompt_id in adjudicated:
            tiers, basis = tier_map(adjudicated[prompt_id]), "adjudicated"
        elif prompt_id in gold:
            tiers, basis = gold[prompt_id], "gold"
        by_tier = dict(sorted(tiers.items(), key=lambda kv: (kv[1], kv[0])))
        yield {
            "prompt_id": prompt_id, "round": number, "messages": messages, "basis": basis,
            "consensus_tiers": tiers_from_map(by_tier),
            "strengths": {str(k): round(v, 4) for k, v in sorted(by_sample.items())},
            "rankings": block.m, "ranking_ids": human.ranking_id[block.rows[p]].tolist(),
        }


def flagged_responses(*, project, limit: int = 50) -> dict:
    """The labelers' content flags (unsafe, factually wrong, off-topic): counts per flag over the project, and
    the latest ``limit`` flagged responses with their prompt, labeler and flags (excluded rankings included)."""
    entries = RankingEntry.objects.filter(ranking__prompt__project=project).exclude(flags=[])
    counts = Counter(flag for flags in entries.values_list("flags", flat=True) for flag in flags)
    labels = dict(RankingEntry.Flag.choices)
    latest = (entries.select_related("sample", "ranking__labeler", "ranking__prompt__round")
              .order_by("-ranking__created_at", "-id")[:limit])
    return {
        "counts": [{"flag": value, "label": label, "count": counts.get(value, 0)} for value, label in labels.items()],
        "total": sum(counts.values()),
        "items": [{"prompt": e.sample.prompt_id, "round": e.ranking.prompt.round.number, "sample": e.sample,
                   "labeler": e.ranking.labeler.username if e.ranking.labeler else "(imported)",
                   "flags": [labels.get(f, f) for f in e.flags], "tier": e.tier + 1, "at": e.ranking.created_at}
                  for e in latest],
    }


# ----------------------------------------------------------------------------- what the quality page and API list
def review_items(*, project, queue: list[dict], limit: int = 10) -> list[dict]:
    """The first ``limit`` rows of the review queue with their prompt, samples (in position order) and
    included rankings, each ranking's order written with response letters ("B > A = C"). Four queries
    whatever the number of rows: prompts, samples, rankings with labelers, entries."""
    rows = queue[:limit]
    rankings = Ranking.objects.filter(exclusion__isnull=True).select_related("labeler").prefetch_related(
        Prefetch("entries", queryset=RankingEntry.objects.order_by("tier", "shown_position")))
    prompts = Prompt.objects.filter(project=project, pk__in=[row["prompt_id"] for row in rows]).prefetch_related(
        Prefetch("samples", queryset=Sample.objects.order_by("position")), Prefetch("rankings", queryset=rankings))
    by_id = {prompt.pk: prompt for prompt in prompts}
    items = []
    for row in rows:
        prompt = by_id[row["prompt_id"]]
        samples = list(prompt.samples.all())
        letters = {sample.pk: chr(ord("A") + sample.position) for sample in samples}
        items.append({**row, "prompt": prompt, "samples": samples,
                      "rankings": [{"ranking": r, "order": _letters_order(r, letters)} for r in prompt.rankings.all()]})
    return items


def _letters_order(ranking: Ranking, letters: dict[int, str]) -> str:
    tiers = tiers_from_map({entry.sample_id: entry.tier for entry in ranking.entries.all()})  # prefetched, in order
    return " > ".join(" = ".join(letters[s] for s in tier) for tier in tiers)


def rankings_excluded(*, project, limit: int = 50) -> list[Ranking]:
    """The project's excluded rankings, newest exclusion first, with labeler and exclusion loaded."""
    return list(Ranking.objects.filter(prompt__project=project, exclusion__isnull=False)
                .select_related("labeler", "exclusion").order_by("-exclusion__created_at")[:limit])


def ai_labeler_list(*, project) -> list[AILabeler]:
    return list(AILabeler.objects.filter(project=project).select_related("user").order_by("user__username"))


def ai_labeler_get(*, project, labeler_id: int) -> AILabeler:
    """The project's AI labeler ``labeler_id``; InvalidInput (location ``labeler_id``) when it has none."""
    labeler = AILabeler.objects.filter(project=project, pk=labeler_id).select_related("user").first()
    if labeler is None:
        raise InvalidInput(f"project {project.slug} has no AI labeler {labeler_id}", location="labeler_id")
    return labeler


def selection_list(*, project, limit: int) -> list[SelectionRecord]:
    """The project's recorded selections, newest first, with round and author loaded."""
    return list(SelectionRecord.objects.filter(round__project=project).select_related("round", "created_by")
                .order_by("-created_at")[:limit])


def round_list(*, project) -> list[Round]:
    return list(Round.objects.filter(project=project).order_by("number"))


def round_get(*, project, number: int) -> Round:
    """The project's round ``number``; InvalidInput (location ``round``) when it has none."""
    round_ = Round.objects.filter(project=project, number=number).first()
    if round_ is None:
        raise InvalidInput(f"project {project.slug} has no round {number}", location="round")
    return round_


def prompt_get(*, project, prompt_id: int) -> Prompt:
    """The project's prompt ``prompt_id``; InvalidInput (location ``prompt_id``) when it has none."""
    prompt = Prompt.objects.filter(pk=prompt_id, project=project).first()
    if prompt is None:
        raise InvalidInput(f"project {project.slug} has no prompt {prompt_id}", location="prompt_id")
    return prompt


def ranking_of_prompt_tiers(*, prompt: Prompt, ranking_id: int) -> list[list[int]]:
    """The tiers of ``ranking_id`` if it ranks ``prompt`` (best first, each tier in shown order)."""
    entries = RankingEntry.objects.filter(ranking_id=ranking_id, ranking__prompt=prompt).order_by(
        "tier", "shown_position")
    by_sample = dict(entries.values_list("sample_id", "tier"))
    if not by_sample:
        raise InvalidInput("the adopted ranking is not a ranking of this prompt", location="adopt")
    return tiers_from_map(by_sample)

