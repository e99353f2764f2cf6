"""Each labeler's row of the quality report over a ``RankingTable``: ``figures.labeler_rows_weighted`` (the
reference, one prompt at a time), computed with arrays. Everything but the agreement with the weighted
majority of the others is counted once; the reweighting passes recount only that.
"""
from __future__ import annotations

import math

import numpy as np

from annotation import provenance
from annotation.quality import metrics as quality
from annotation.quality.array_figures import RankingPairs
from annotation.quality.arrays import MISSING, Prompts, RankingTable, argsort_pairs, chunks, means, sample_pairs
from annotation.quality.figures import HUMAN_SOURCES, TIMED_SOURCES

AI_SOURCES = frozenset(provenance.AI_SOURCES)


class LabelerCounts:
    """What a labeler's row needs that does not depend on the weights, as arrays over the labelers."""

    def __init__(self, table: RankingTable, prompts: Prompts, pairs: RankingPairs, gold: dict) -> None:
        self.table, self.prompts = table, prompts
        self.labelled = (table.labeler_id != 0) & table.source_in(HUMAN_SOURCES | AI_SOURCES)  # people and AI
        self.human = table.source_in(HUMAN_SOURCES)
        self.ids = np.unique(table.labeler_id[self.labelled])
        self.of_row = np.where(self.labelled, np.searchsorted(self.ids, table.labeler_id), -1)
        self.gold_prompt = np.isin(prompts.ids, list(gold))
        n = len(self.ids)
        self.rankings = np.bincount(self.of_row[self.labelled], minlength=n)
        self.agreement, self.tau = self._agreement(pairs)
        self.gold = np.zeros((2, n), np.int64)  # agreeing, compared pairs against gold
        self.bias = np.zeros((2, n), np.int64)  # earlier shown preferred, strict pairs
        for block in prompts.blocks:
            for sl in chunks(block):
                self._count_block(block, sl, gold)

    def _agreement(self, pairs: RankingPairs) -> tuple[list, list]:
        """Mean agreement and τ-b of each labeler's rankings with every other labelled human ranking."""
        scored = self.human & self.labelled
        first = self.labelled[pairs.a] & scored[pairs.b]
        second = self.labelled[pairs.b] & scored[pairs.a]
        owners = np.concatenate([self.of_row[pairs.a[first]], self.of_row[pairs.b[second]]])
        n = len(self.ids)
        agreement, _ = means(np.concatenate([pairs.agreement[first], pairs.agreement[second]]), owners, n)
        tau, _ = means(np.concatenate([pairs.tau[first], pairs.tau[second]]), owners, n)
        return agreement, tau

    def _add(self, target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
        mine = self.labelled[rows]
        np.add.at(target, self.of_row[rows[mine]], values[mine])

    def _count_block(self, block, sl: slice, gold: dict) -> None:
        rows, rel, both = block.rows[sl], block.rel[sl], block.both[sl]
        x, y = sample_pairs(block.tiers.shape[2])
        shown = block.shown[sl]
        direction = np.sign(shown[..., y].astype(np.int64) - shown[..., x])  # +1: x shown first
        strict = both & (rel != 0) & (direction != 0)
        self._add(self.bias[0], rows, np.count_nonzero(strict & (rel * direction > 0), axis=-1))
        self._add(self.bias[1], rows, np.count_nonzero(strict, axis=-1))
        on_gold = np.flatnonzero(self.gold_prompt[block.prompts[sl]])
        if not len(on_gold):
            return
        samples = block.samples[sl][on_gold]
        reference = np.array([[gold[int(self.prompts.ids[p])].get(int(s), MISSING) for s in row]
                              for p, row in zip(block.prompts[sl][on_gold], samples)], np.int64).reshape(samples.shape)
        g_rel = (reference[:, x] < reference[:, y]).astype(np.int8) - (reference[:, x] > reference[:, y])
        common = both[on_gold] & ((reference[:, x] != MISSING) & (reference[:, y] != MISSING))[:, None, :]
        self._add(self.gold[0], rows[on_gold], (common & (rel[on_gold] == g_rel[:, None, :])).sum(-1))
        self._add(self.gold[1], rows[on_gold], common.sum(-1))

    def consensus(self, weights: dict[int, float]) -> np.ndarray:
        """(agreeing, counted) pairs per labeler against the weighted majority of the other human rankings of
        each non-gold prompt (``metrics.majority_agreement_counts``); the votes are summed in ranking order."""
        weight_of = np.array([weights.get(int(i), 1.0) for i in self.ids] + [1.0])  # [-1]: no labeler
        row_weight = weight_of[self.of_row]
        out = np.zeros((2, len(self.ids)), np.int64)
        for block in self.prompts.blocks:
            if block.m < 2:
                continue  # nobody else ranked the prompt
            for sl in chunks(block):
                rows, rel, both = block.rows[sl], block.rel[sl], block.both[sl]
                human, m = self.human[rows], block.m
                terms = row_weight[rows][:, :, None] * (rel * (human[:, :, None] & both))  # (P, m, q); 0 or -0 off
                has_others = (human.sum(1, keepdims=True) - human) > 0
                judged = has_others & ~self.gold_prompt[block.prompts[sl]][:, None]
                counts = np.zeros((2, *rows.shape), np.int64)
                for i in range(m):
                    others = [j for j in range(m) if j != i]
                    vote = terms[:, others[0]].copy()
                    for j in others[1:]:
                        vote += terms[:, j]  # in ranking order, as the reference's sum()
                    counted = both[:, i] & (np.abs(vote) >= 1e-12) & judged[:, i, None]
                    counts[0, :, i] = np.count_nonzero(counted & (rel[:, i] == np.where(vote > 0, 1, -1)), axis=-1)
                    counts[1, :, i] = np.count_nonzero(counted, axis=-1)
                self._add(out[0], rows, counts[0])
                self._add(out[1], rows, counts[1])
        return out


def _median(values: np.ndarray):
    """``statistics.median`` of sorted integers: the middle one, or the mean of the middle two."""
    n = len(values)
    return int(values[n // 2]) if n % 2 else (int(values[n // 2 - 1]) + int(values[n // 2])) / 2


def _times(table: RankingTable, counts: LabelerCounts, ratio: float) -> tuple:
    """(project median, {labeler index: median}, fast rankings per labeler) over timed rankings."""
    timed = counts.labelled & table.source_in(TIMED_SOURCES) & (table.time_spent_ms > 0)
    if not timed.any():
        return None, {}, np.zeros(len(counts.ids), np.int64)
    project_median = _median(np.sort(table.time_spent_ms[timed]))
    owner, time = counts.of_row[timed], table.time_spent_ms[timed]
    order = argsort_pairs(owner, time)
    owner, time = owner[order], time[order]
    bounds = np.searchsorted(owner, np.arange(len(counts.ids) + 1))
    medians = {i: _median(time[bounds[i]:bounds[i + 1]]) for i in range(len(counts.ids)) if bounds[i + 1] > bounds[i]}
    fast = np.bincount(owner[time < ratio * project_median], minlength=len(counts.ids))
    return project_median, medians, fast


def _main_sources(table: RankingTable, counts: LabelerCounts, prompts: Prompts) -> list[str]:
    """Each labeler's most common source; a tie goes to the source met first in prompt order, as Counter does."""
    rows = np.flatnonzero(counts.labelled)
    order = rows[argsort_pairs(prompts.first_row[prompts.of_row[rows]], rows)]
    owner, source = counts.of_row[order], table.source[order]
    key = owner * len(table.sources) + source
    kinds, first = np.unique(key, return_index=True)
    tallies = np.bincount(key, minlength=len(counts.ids) * len(table.sources))
    best: dict[int, tuple] = {}
    for kind, at in sorted(zip(kinds.tolist(), first.tolist()), key=lambda kv: kv[1]):
        labeler, src = divmod(kind, len(table.sources))
        if labeler not in best or tallies[kind] > best[labeler][0]:
            best[labeler] = (int(tallies[kind]), table.sources[src])
    return [best[i][1] for i in range(len(counts.ids))]


def labeler_rows_weighted(table: RankingTable, prompts: Prompts, pairs: RankingPairs, gold: dict, settings: dict,
                          *, rounds: int = 5) -> list[dict]:
    """``figures.labeler_rows_weighted``: rows at the fixed point of the reweighting, at most ``rounds`` passes."""
    counts = LabelerCounts(table, prompts, pairs, gold)
    ratio = settings["speed_ratio"]
    project_median, medians, fast = _times(table, counts, ratio)
    sources = _main_sources(table, counts, prompts)
    weights: dict[int, float] = {}
    rows: list[dict] = []
    for _ in range(rounds):
        consensus = counts.consensus(weights)
        rows = [_row(counts, i, consensus[:, i], sources[i], project_median, medians.get(i), fast[i], ratio)
                for i in range(len(counts.ids))]
        rows.sort(key=lambda row: row["labeler"])
        updated = {row["labeler_id"]: row["weight"] for row in rows}
        if updated == weights:
            break
        weights = updated
    return rows


def _row(counts: LabelerCounts, i: int, consensus, source: str, project_median, median_time, fast, ratio) -> dict:
    labeler_id = int(counts.ids[i])
    gold_agree, gold_total = int(counts.gold[0, i]), int(counts.gold[1, i])
    cons_agree, cons_total = int(consensus[0]), int(consensus[1])
    reliability, raw_weight = quality.reliability_weight(gold_agree + cons_agree, gold_total + cons_total)
    earlier, strict = int(counts.bias[0, i]), int(counts.bias[1, i])
    bias = {"pairs": 0, "earlier_preferred": None, "z": None}
    if strict:
        bias = {"pairs": strict, "earlier_preferred": earlier / strict,
                "z": (earlier - strict / 2) / math.sqrt(strict / 4)}
    return {
        "labeler_id": labeler_id, "labeler": counts.table.usernames[labeler_id], "source": source,
        "rankings": int(counts.rankings[i]),
        "pairwise_agreement": counts.agreement[i], "kendall_tau_b": counts.tau[i],
        "agreement_with_humans": counts.agreement[i],
        "gold_pairs": gold_total, "gold_agreement": round(gold_agree / gold_total, 4) if gold_total else None,
        "consensus_pairs": cons_total,
        "consensus_agreement": round(cons_agree / cons_total, 4) if cons_total else None,
        "gold_agreeing": gold_agree, "consensus_agreeing": cons_agree,
        "reliability": reliability, "weight": quality.shrunk_weight(raw_weight, gold_total + cons_total),
        "raw_weight": raw_weight, "evidence_pairs": gold_total + cons_total,
        "position_bias": bias,
        "median_time_ms": median_time, "fast_rankings": int(fast) if project_median else 0,
        "speed_flag": bool(project_median and median_time is not None and median_time < ratio * project_median),
    }
