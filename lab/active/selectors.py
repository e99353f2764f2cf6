"""Reads of active selection: each strategy's scores for a round's prompts, and what a selection can change.

The strategies are described in ``lab.active.services``; the pure arithmetic and the measured comparison
in ``lab.active.compare``.
"""
from __future__ import annotations

from annotation.models import Prompt, Round
from annotation.provenance import HUMAN_SOURCES
from annotation.quality.array_consensus import mean_agreements, table_rows
from annotation.quality.arrays import prompts_of
from annotation.quality.ranking_table import ranking_table
from lab.active.compare import pair_uncertainty
from lab.scorers import Scorer


def round_prompts_with_samples(*, round_: Round) -> list[Prompt]:
    """The round's prompts in id order, their samples prefetched."""
    return list(Prompt.objects.filter(round=round_).prefetch_related("samples").order_by("id"))


def disagreement_scores(*, round_: Round) -> dict[int, float]:
    """1 − the mean pairwise agreement of each prompt's human rankings (0 with fewer than two), over the
    round's rankings read as arrays (``annotation.quality.array_consensus.mean_agreements``)."""
    table = ranking_table(project=round_.project, round_number=round_.number)
    people = table.source_in(HUMAN_SOURCES) & (table.labeler_id != 0)  # people's disagreement only
    ids, agreement = mean_agreements(prompts_of(table_rows(table, people)))
    by_prompt = dict(zip(ids.tolist(), (1.0 - agreement).tolist()))
    return {prompt: by_prompt.get(prompt, 0.0)
            for prompt in Prompt.objects.filter(round=round_).values_list("id", flat=True)}


def uncertainty_scores(*, prompts: list[Prompt], scorer: Scorer) -> dict[int, float]:
    """The reward model's doubt about each prompt's responses (``pair_uncertainty`` of their scores)."""
    out = {}
    for prompt in prompts:
        samples = sorted(prompt.samples.all(), key=lambda s: s.position)
        out[prompt.pk] = pair_uncertainty(scorer(prompt.messages, [s.text for s in samples]))
    return out


CANNOT_ACT = "cannot act: "
UNCERTAINTY_MIN_SPREAD = 0.01  # scores closer than this do not order prompts meaningfully


def selection_notes(*, round_: Round, strategy: str, scores: dict[int, float]) -> list[str]:
    """What a researcher must know about a selection: when it cannot change what labelers get next (a note
    starting "cannot act: "), and when its scores barely differ."""
    values = list(scores.values())
    if strategy == "disagreement":
        disagreeing = [pk for pk, score in scores.items() if score > 0]
        if not disagreeing:
            return [CANNOT_ACT + "every prompt scores 0: no prompt has two human rankings that disagree yet (a "
                    "fresh round, or overlap 1); the queue stays in id order"]
        overlap = round_.project.overlap
        full = Prompt.objects.filter(pk__in=disagreeing, slots_taken__gte=overlap, is_gold=False).count()
        if full == len(disagreeing):
            return [CANNOT_ACT + f"all {full} disagreeing prompts have their {overlap} overlap slots filled, so no "
                    "labeler is served them again; raise the overlap or settle them in the review queue"]
        if full:
            return [f"{full} of the {len(disagreeing)} disagreeing prompts have all their slots filled and get no "
                    "more labels"]
    if strategy == "uncertainty" and values and max(values) - min(values) < UNCERTAINTY_MIN_SPREAD:
        return [f"scores span only {min(values):.4f}–{max(values):.4f}: the reward model barely separates the "
                "prompts (too little training?), so the order is close to arbitrary"]
    return []
