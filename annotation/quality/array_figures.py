"""The quality report's figures over a ``RankingTable`` (``annotation.quality.arrays``): the same numbers as
``annotation.quality.figures``, which stays the readable definition (one prompt at a time, over
``RankingRecord`` objects) and the reference the tests compare this module with, bit for bit.

Each figure is computed once over arrays: ranking pairs within a prompt (agreement, τ-b), units of the α
coincidence matrix, per-ranking counts against gold, against the weighted majority of the others and of
position bias. Only the consensus counts depend on the labelers' weights, so only they are recomputed in
each reweighting pass. Means are exact (``arrays.fsums``), and α is computed from the reference's own
coincidence matrix (same entries to the last bit, same insertion order: ``coincidences``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from annotation.quality import metrics as quality
from annotation.quality.arrays import MISSING, Block, Prompts, RankingTable, chunks, fsums, means, round4

EPOCH = date(1970, 1, 1)


@dataclass
class RankingPairs:
    """Every pair of rankings of the same prompt (a before b in id order) with their agreement and τ-b."""
    a: np.ndarray  # table rows
    b: np.ndarray
    agreement: np.ndarray  # float, NaN where undefined (None in the reference)
    tau: np.ndarray


def ranking_pairs(prompts: Prompts) -> RankingPairs:
    parts = []
    for block in prompts.blocks:
        if block.m < 2:
            continue  # a prompt ranked once has nobody to agree with
        i, j = np.triu_indices(block.m, 1)
        for sl in chunks(block):
            rel, both = block.rel[sl], block.both[sl]
            ri, rj, common = rel[:, i], rel[:, j], both[:, i] & both[:, j]  # (P, pairs, q)
            n0 = np.count_nonzero(common, axis=-1)
            agree = np.count_nonzero(common & (ri == rj), axis=-1)
            product = ri * rj
            concordant = np.count_nonzero(common & (product > 0), axis=-1)
            discordant = np.count_nonzero(common & (product < 0), axis=-1)
            ties_a = np.count_nonzero(common & (ri == 0), axis=-1)
            ties_b = np.count_nonzero(common & (rj == 0), axis=-1)
            denominator = np.sqrt(((n0 - ties_a) * (n0 - ties_b)).astype(np.float64))
            with np.errstate(divide="ignore", invalid="ignore"):
                agreement = np.where(n0 > 0, agree / n0, np.nan)
                tau = np.where(denominator > 0, (concordant - discordant) / denominator, np.nan)
            rows = block.rows[sl]
            parts.append((rows[:, i].ravel(), rows[:, j].ravel(), agreement.ravel(), tau.ravel()))
    if not parts:
        empty = np.zeros(0, np.int64)
        return RankingPairs(empty, empty, np.zeros(0), np.zeros(0))
    return RankingPairs(*(np.concatenate(column) for column in zip(*parts)))


# --------------------------------------------------------------------------------------------- agreement summary
@dataclass
class AlphaUnits:
    """One unit of Krippendorff's α per (prompt, sample of its first ranking): how many rankings gave each
    mid-rank (code 2·rank − 2, so 1, 1.5, 2 … are 0, 1, 2 …), sorted in the reference's unit order."""
    order: np.ndarray  # (n,) sort key: the prompt's first ranking row, then the sample's place in that ranking
    round_number: np.ndarray  # (n,)
    counts: np.ndarray  # (n, V) int
    block: np.ndarray  # (n,) where the unit is, to list its values in order: block,
    prompt: np.ndarray  # prompt in the block
    sample: np.ndarray  # and sample


def _mid_rank_codes(tiers: np.ndarray) -> np.ndarray:
    """2 · mid-rank − 2 of every ranked sample (``metrics.mid_ranks``), from tiers (..., u)."""
    ranked = tiers != MISSING
    below = np.count_nonzero((tiers[..., None, :] < tiers[..., :, None]) & ranked[..., None, :], axis=-1)
    level = np.count_nonzero((tiers[..., None, :] == tiers[..., :, None]) & ranked[..., None, :], axis=-1)
    return 2 * below + level - 1


def alpha_units(table: RankingTable, prompts: Prompts, members: np.ndarray) -> AlphaUnits:
    """The units of ``agreement_summary`` over the rankings in ``members`` (a row mask)."""
    parts = []
    width = 2 * max((b.tiers.shape[2] for b in prompts.blocks), default=1) - 1
    for number, block in enumerate(prompts.blocks):
        if block.m < 2:
            continue
        for sl in chunks(block):
            inside = members[block.rows[sl]]
            keep = np.flatnonzero(inside.sum(1) >= 2) + (sl.start or 0)
            if not len(keep):
                continue
            parts.append(_block_units(table, block, number, keep, members, width))
    if not parts:
        empty = np.zeros(0, np.int64)
        return AlphaUnits(empty, empty, np.zeros((0, 1), np.int32), empty, empty, empty)
    columns = [np.concatenate(column) for column in zip(*parts)]
    order = np.argsort(columns[0], kind="stable")
    return AlphaUnits(*(column[order] for column in columns))


def _block_units(table, block: Block, number: int, keep: np.ndarray, members: np.ndarray, width: int) -> tuple:
    inside, tiers, shown = members[block.rows[keep]], block.tiers[keep], block.shown[keep]
    P, m, u = tiers.shape
    first = inside.argmax(1)  # the first member ranking of each prompt: its samples are the units
    tf, sf = tiers[np.arange(P), first], shown[np.arange(P), first]  # (P, u), its order: tier, shown position
    other, this = (tf[:, None, :], sf[:, None, :]), (tf[:, :, None], sf[:, :, None])  # (P, 1, u), (P, u, 1)
    before = (other[0] < this[0]) | ((other[0] == this[0]) & (other[1] < this[1]))
    place = (before & (other[0] != MISSING)).sum(-1)  # the sample's place in the first ranking's order
    coded = inside[:, :, None] & (tiers != MISSING)  # (P, m, u): a member ranking's value for the sample
    at_p, _, at_s = np.nonzero(coded)
    counts = np.bincount((at_p * u + at_s) * width + _mid_rank_codes(tiers)[coded],
                         minlength=P * u * width).astype(np.int32).reshape(P, u, width)  # (P, u, V)
    unit = (tf != MISSING) & (counts.sum(-1) >= 2)  # a unit coded once carries nothing
    p, s = np.nonzero(unit)
    order = block.rows[keep][p, first[p]] * (1 << 20) + place[p, s]
    return (order, table.round_number[block.rows[keep][p, 0]], counts[p, s], np.full(len(p), number, np.int32),
            keep[p].astype(np.int32), s.astype(np.int32))


def _unit_values(units: AlphaUnits, k: int, blocks: list[Block], members: np.ndarray) -> np.ndarray:
    """The unit's mid-rank codes in ranking order, as the reference lists them."""
    p, s = units.prompt[k], units.sample[k]
    block = blocks[units.block[k]]
    ranked = members[block.rows[p]] & (block.tiers[p, :, s] != MISSING)
    return _mid_rank_codes(block.tiers[p])[ranked, s]


def coincidences(units: AlphaUnits, pick: np.ndarray, blocks: list[Block], members: np.ndarray) -> dict:
    """``metrics._coincidences`` of the picked units, to the last bit: {(c, k): o_ck} (mid-ranks as floats) in
    the reference's insertion order. The reference adds 1/(m_u − 1) once per value pair; where every m_u − 1
    is a power of two those sums are exact, so counts of value pairs give them; a key that also gets
    increments such as 1/3 is summed one increment at a time in unit order, as the reference does."""
    counts = units.counts if pick.all() else units.counts[pick]
    size = counts.sum(1)
    width = counts.shape[1]
    matrix, ordered_total = np.zeros((width, width)), np.zeros((width, width))
    for m in np.unique(size):
        h = counts[size == m].astype(np.float64)
        ordered = h.T @ h - np.diag(h.sum(0))  # ordered value pairs within units (integers, exact in float64)
        matrix += ordered / (m - 1)
        ordered_total += ordered
    keys = _first_appearance(counts, ordered_total, units, np.flatnonzero(pick), blocks, members)
    inexact = ((size - 1) & (size - 2)) != 0  # 1/(m_u - 1) is not a power of two
    if inexact.any():  # (the units are in the reference's order)
        for c, k in keys:
            if _pair_counts(counts[inexact], c, k).any():
                matrix[c, k] = _sequential_sum(_pair_counts(counts, c, k), size)
    return {((c + 2) / 2, (k + 2) / 2): float(matrix[c, k]) for c, k in keys}


def _pair_counts(counts: np.ndarray, c: int, k: int) -> np.ndarray:
    """How many ordered value pairs (c, k) each unit holds."""
    return counts[:, c] * (counts[:, c] - 1) if c == k else counts[:, c] * counts[:, k]


def _sequential_sum(repeats: np.ndarray, size: np.ndarray, step: int = 1 << 22) -> float:
    """0.0 + 1/(m_1 − 1) + … one increment at a time, ``repeats[u]`` increments for unit u, in unit order
    (cumsum adds in order), ``step`` increments at a time."""
    units = np.flatnonzero(repeats)
    increments, repeats = 1.0 / (size[units] - 1), repeats[units]
    ends = np.cumsum(repeats)
    total, start = 0.0, 0
    while start < len(units):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - repeats[start] + step, side="right")))
        series = np.repeat(increments[start:stop], repeats[start:stop])
        total = float(np.cumsum(np.concatenate([[total], series]))[-1])
        start = stop
    return total


def _first_appearance(counts, pairs, units, picked, blocks, members) -> list[tuple[int, int]]:
    """The coincidence keys (c, k) in the order the reference first meets them: units in order, then each
    unit's value pairs (i, j) in ranking order."""
    wanted = {(int(c), int(k)) for c, k in zip(*np.nonzero(pairs))}
    first: dict[tuple[int, int], int] = {}
    for start in range(0, len(counts), 4096):
        h = counts[start:start + 4096]
        for c, k in wanted - set(first):
            present = (h[:, c] >= 2) if c == k else (h[:, c] > 0) & (h[:, k] > 0)
            if present.any():
                first[(c, k)] = start + int(present.argmax())
        if len(first) == len(wanted):
            break
    ranked = []
    for position in sorted(set(first.values())):
        values = _unit_values(units, picked[position], blocks, members)
        i, j = np.nonzero(~np.eye(len(values), dtype=bool))
        width = counts.shape[1]
        met, at = np.unique(values[i] * width + values[j], return_index=True)
        for key in met[np.argsort(at)]:
            c, k = divmod(int(key), width)
            if first.get((c, k)) == position:
                ranked.append((c, k))
    return ranked


def agreement_summaries(table, prompts, pairs: RankingPairs, members, numbers: list[int]) -> tuple[dict, list]:
    """``figures.agreement_summary`` of the member rankings, overall and for each round in ``numbers``."""
    labelled = members & (table.labeler_id != 0)
    both = labelled[pairs.a] & labelled[pairs.b]
    units = alpha_units(table, prompts, labelled)
    rounds = np.searchsorted(numbers, table.round_number[pairs.a[both]])
    pair_groups = {"overall": (np.zeros(both.sum(), np.int64), 1), "rounds": (rounds, len(numbers))}
    out = {}
    for name, (groups, n) in pair_groups.items():
        agreement, comparisons = means(pairs.agreement[both], groups, n)
        tau, _ = means(pairs.tau[both], groups, n)
        out[name] = [{"comparisons": int(c), "pairwise_agreement": a, "kendall_tau_b": t}
                     for c, a, t in zip(comparisons, agreement, tau)]
    rankings = np.bincount(np.searchsorted(numbers, table.round_number[labelled]), minlength=len(numbers))
    summaries = []
    for scope, count, pick in [(out["overall"][0], labelled.sum(), np.ones(len(units.order), bool))] + [
            (out["rounds"][r], rankings[r], units.round_number == n) for r, n in enumerate(numbers)]:
        value = quality.alpha_from_coincidences(coincidences(units, pick, prompts.blocks, labelled))
        summaries.append({"rankings": int(count), "comparisons": scope["comparisons"],
                          "pairwise_agreement": scope["pairwise_agreement"], "kendall_tau_b": scope["kendall_tau_b"],
                          "alpha_ordinal": round(value, 4) if value is not None else None})
    return summaries[0], summaries[1:]


# ------------------------------------------------------------------------------------- timeline and review queue
def timeline(table: RankingTable, pairs: RankingPairs, members: np.ndarray) -> dict:
    """``figures.timeline``: mean agreement per day of the later ranking of each pair."""
    labelled = members & (table.labeler_id != 0)
    both = labelled[pairs.a] & labelled[pairs.b]
    day = np.maximum(table.day[pairs.a[both]], table.day[pairs.b[both]])
    days, groups = np.unique(day, return_inverse=True)
    agreement, comparisons = means(pairs.agreement[both], groups, len(days))
    return {"day": [(EPOCH + timedelta(days=int(d))).isoformat() for d in days], "pairwise_agreement": agreement,
            "comparisons": [int(c) for c in comparisons]}


def review_queue(table, prompts: Prompts, pairs: RankingPairs, members, *, threshold: float, reviewed: set[int],
                 gold: set[int]) -> list[dict]:
    """``figures.review_queue``: prompts whose member rankings agree less than ``threshold``, worst first."""
    labelled = members & (table.labeler_id != 0)
    both = labelled[pairs.a] & labelled[pairs.b]
    n = len(prompts.ids)
    groups = prompts.of_row[pairs.a[both]]
    values = pairs.agreement[both]
    known = ~np.isnan(values)
    present = np.bincount(groups[known], minlength=n)
    sums = np.asarray(fsums(values[known], groups[known], n))
    rankings = np.bincount(prompts.of_row[labelled], minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = sums / present
    skip = np.isin(prompts.ids, sorted(reviewed | gold))
    candidates = np.flatnonzero((rankings >= 2) & (present > 0) & ~skip & (raw < threshold + 1e-4))
    agreement = round4(raw[candidates])  # raw = fmean: fsum / n
    queued = candidates[agreement < threshold]
    agreement = agreement[agreement < threshold]
    order = np.lexsort((prompts.ids[queued], agreement))
    return [{"prompt_id": p, "rankings": n, "agreement": a} for p, n, a in
            zip(prompts.ids[queued][order].tolist(), rankings[queued][order].tolist(), agreement[order].tolist())]
