"""Per-prompt consensus and disagreement over a ``RankingTable``'s blocks (``annotation.quality.arrays``): the
numbers of ``metrics.consensus`` (Bradley-Terry by ``metrics.bradley_terry``) and of active selection's
"1 − mean pairwise agreement", computed for every prompt of a block at once instead of one prompt at a time.

Bradley-Terry: the same MM iteration (Hunter 2004, eq. 3) with the same prior, iteration cap and stopping
rule per prompt, over all prompts of a block together; the win and comparison counts are accumulated in the
reference's order (ranking by ranking, a tie as two half-weight comparisons) and each response's denominator
is summed over its neighbours in the order the reference's dict holds them. The geometric-mean scale uses
numpy's log and exp (not libm's, which ``math`` calls: they differ in the last bit for a few per cent of
values) and a compensated sum instead of ``math.fsum``, so strengths can differ from the reference's by a few
units in the last place; ``consensus_rows`` prints them to 4 decimals, where they are equal (the tests check).

Disagreement: each pair's agreement is ``agree / shared pairs`` as ``metrics.pairwise_agreement`` divides,
summed in ``itertools.combinations`` order as ``sum`` adds them, so scores are equal to the last bit.
"""
from __future__ import annotations

import numpy as np

from annotation.quality.arrays import MISSING, Block, Prompts, RankingTable

PRIOR, ITERATIONS, TOLERANCE = 0.5, 200, 1e-10  # metrics.consensus / metrics.bradley_terry defaults
CHUNK_PROMPTS = 50_000  # prompts fitted together (temporaries of (P, u, u) floats)


def table_rows(table: RankingTable, keep: np.ndarray) -> RankingTable:
    """The table's rows in ``keep`` (a row mask) with their entries, in the same order."""
    new_row = np.cumsum(keep) - 1
    entries = keep[table.entry_row]
    columns = ("ranking_id", "prompt_id", "round_number", "labeler_id", "source", "time_spent_ms", "day")
    return RankingTable(**{name: getattr(table, name)[keep] for name in columns},
                        entry_row=new_row[table.entry_row[entries]], entry_sample=table.entry_sample[entries],
                        entry_tier=table.entry_tier[entries], entry_shown=table.entry_shown[entries],
                        sources=table.sources, usernames=table.usernames)


# ------------------------------------------------------------------------------------------------ Bradley-Terry
def consensus_strengths(prompts: Prompts, row_weight: np.ndarray) -> list[np.ndarray]:
    """Per block, the (P, u) Bradley-Terry log-strengths of its prompts' samples (``block.samples`` order), the
    rankings weighted by ``row_weight`` (per table row), as ``metrics.consensus`` computes them."""
    out = []
    for block in prompts.blocks:
        parts = []
        for start in range(0, len(block.prompts), CHUNK_PROMPTS):
            sl = slice(start, start + CHUNK_PROMPTS)
            tiers, shown = block.tiers[sl].astype(np.int64), block.shown[sl].astype(np.int64)
            wins, n = _counts(tiers, row_weight[block.rows[sl]])
            neighbours = _neighbour_order(tiers, shown, block.samples[sl])
            parts.append(_fit(wins, np.take_along_axis(n, neighbours, axis=2), neighbours))
        out.append(np.concatenate(parts) if parts else np.zeros(block.samples.shape))
    return out


def _counts(tiers: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wins (P, u) and comparisons (P, u, u) as ``bradley_terry`` adds them up: ranking by ranking, each of a
    response's wins one addition of the ranking's weight, then each tie one of half of it; a tie counts twice
    half in the pair's comparisons; then the prior, after every comparison."""
    P, m, u = tiers.shape
    wins, n = np.zeros((P, u)), np.zeros((P, u, u))
    other = ~np.eye(u, dtype=bool)
    for r in range(m):
        t, ranked = tiers[:, r], tiers[:, r] != MISSING
        pair = ranked[:, :, None] & ranked[:, None, :] & other
        beats = pair & (t[:, :, None] < t[:, None, :])
        ties = pair & (t[:, :, None] == t[:, None, :])
        w = weights[:, r, None]
        half = w / 2
        for counted, step in ((beats.sum(-1), w), (ties.sum(-1), half)):
            for k in range(u - 1):
                wins = np.where(k < counted, wins + step, wins)
        n = np.where(ties, (n + half[..., None]) + half[..., None], np.where(pair, n + w[..., None], n))
    for _ in range(u - 1):  # every pair of the prompt's samples: `prior` virtual wins each way
        wins = wins + PRIOR
    return wins, np.where(other, n + 2 * PRIOR, n)


def _neighbour_order(tiers: np.ndarray, shown: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(P, u, u − 1): each sample's other samples in the order ``bradley_terry``'s comparison dict first met
    their pair: the first ranking that ranks both, within it the strict pairs (``pairs_from_tiers``: better
    tier, worse tier, then shown positions) before the ties; pairs nobody compared last, in the prior's order
    (samples sorted by their repr)."""
    P, m, u = tiers.shape
    first = np.full((P, u, u), np.iinfo(np.int64).max)
    for r in range(m):
        t, s, ranked = tiers[:, r], shown[:, r] & 0x1FF, tiers[:, r] != MISSING
        ti, tj, si, sj = t[:, :, None], t[:, None, :], s[:, :, None], s[:, None, :]
        better = np.where(ti < tj, ti, tj) & 0x1FF
        worse = np.where(ti < tj, tj, ti) & 0x1FF
        s_better, s_worse = np.where(ti < tj, si, sj), np.where(ti < tj, sj, si)
        strict = (better << 27) | (worse << 18) | (s_better << 9) | s_worse
        tie = (1 << 36) | (better << 27) | (np.minimum(si, sj) << 9) | np.maximum(si, sj)
        key = (r << 40) | np.where(ti == tj, tie, strict)
        both = ranked[:, :, None] & ranked[:, None, :]
        first = np.where(both & (key < first), key, first)
    never = first == np.iinfo(np.int64).max
    if never.any():  # the prior's combinations over the samples sorted by repr
        place = np.argsort(np.argsort(samples.astype(str), axis=1, kind="stable"), axis=1)
        low = np.minimum(place[:, :, None], place[:, None, :])
        high = np.maximum(place[:, :, None], place[:, None, :])
        first = np.where(never, (m << 40) | (low << 9) | high, first)
    first[:, np.arange(u), np.arange(u)] = np.iinfo(np.int64).max  # a sample is not its own neighbour
    return np.argsort(first, axis=2, kind="stable")[:, :, :u - 1]


def _fit(wins: np.ndarray, n: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """MM iterations of every prompt until its largest change is below the tolerance (its last update kept, as
    the reference's loop breaks after it), at most ``ITERATIONS``; ``n`` in neighbour order. Log-strengths
    (P, u). Converged prompts ride along frozen until a quarter of the working set has, then leave it."""
    P, u = wins.shape
    strength = np.ones((P, u))
    where, s, nb, counts, w = np.arange(P), strength.copy(), neighbours, n, wins
    done = np.zeros(P, bool)
    for _ in range(ITERATIONS):
        denominator = np.zeros(s.shape)
        for k in range(u - 1):  # Σ_j n_ij / (p_i + p_j), added in the reference's neighbour order
            denominator = denominator + counts[:, :, k] / (s + np.take_along_axis(s, nb[:, :, k], axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            updated = np.where(denominator != 0, w / denominator, s)
        logs = np.log(np.maximum(updated, 1e-300))
        updated = updated / np.exp(_compensated_sum(logs) / u)[:, None]  # geometric mean 1
        change = np.abs(updated - s).max(axis=1, initial=0.0)
        s = np.where(done[:, None], s, updated)
        done = done | (change < TOLERANCE)
        if done.all():
            break
        if done.mean() > 0.25:
            strength[where[done]] = s[done]
            keep = ~done
            where, s, nb, counts, w, done = where[keep], s[keep], nb[keep], counts[keep], w[keep], done[keep]
    strength[where] = s
    return np.log(np.maximum(strength, 1e-300))


def _compensated_sum(values: np.ndarray) -> np.ndarray:
    """Row sums (Neumaier): the correctly rounded sum that ``math.fsum`` gives, but for rare half-way cases."""
    total = values[:, 0].copy() if values.shape[1] else np.zeros(len(values))
    error = np.zeros(len(values))
    for k in range(1, values.shape[1]):
        x = values[:, k]
        after = total + x
        error += np.where(np.abs(total) >= np.abs(x), (total - after) + x, (x - after) + total)
        total = after
    return total + error


# ------------------------------------------------------------------------------------------------- disagreement
def mean_agreements(prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, mean pairwise agreement) of the prompts with ≥ 2 rankings: the agreements of their ranking
    pairs in ``combinations`` order, added one at a time from 0 and divided by their number, as
    ``sum(agreements) / len(agreements)`` does."""
    ids, values = [], []
    for block in prompts.blocks:
        if block.m < 2:
            continue
        ids.append(prompts.ids[block.prompts])
        values.append(_block_mean_agreement(block))
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(ids), np.concatenate(values)


def _block_mean_agreement(block: Block) -> np.ndarray:
    total = np.zeros(len(block.prompts))
    i, j = np.triu_indices(block.m, 1)  # combinations(range(m), 2), in its order
    for a, b in zip(i.tolist(), j.tolist()):
        common = block.both[:, a] & block.both[:, b]
        agree = np.count_nonzero(common & (block.rel[:, a] == block.rel[:, b]), axis=-1)
        total = total + agree / np.count_nonzero(common, axis=-1)
    return total / len(i)
