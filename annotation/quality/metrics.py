"""Pure label-quality metrics over rankings: no database, no Django; plain dicts in, numbers out.

A ranking here is ``{item: tier}`` (tier 0 is best; equal tiers are ties), the shape of one labeler's
ranking of one prompt's K responses (``preferences.tiers.tier_map`` of its tiers). Metrics:

- ``pairwise_agreement(a, b)``: the fraction of the C(K,2) item pairs on which two rankings state the same
  relation (a ≻ b, a ≺ b or a tie).
- ``kendall_tau_b(a, b)``: Kendall's τ-b, tie-aware: (n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2)).
- ``krippendorff_alpha(units, metric=...)``: Krippendorff's α for any number of coders with missing values;
  α = 1 − D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability"), with the nominal, ordinal and interval difference functions.
- ``bradley_terry(comparisons)``: Bradley-Terry strengths by Hunter's (2004) MM algorithm, ties half a win
  each, with a small symmetric prior so that a response that always wins stays finite.
- ``position_bias(rankings)``: how often the response shown earlier was preferred (0.5 = no bias), with the
  binomial z-score against 0.5.
- ``speed_flags(times, ratio)``: which times are far below the median.

    >>> pairwise_agreement({1: 0, 2: 1, 3: 2}, {1: 0, 2: 2, 3: 1})
    0.6666666666666666
    >>> round(kendall_tau_b({1: 0, 2: 1, 3: 2}, {1: 0, 2: 2, 3: 1}), 4)
    0.3333
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations

from preferences.tiers import pairs_from_tiers, tied_pairs, tier_map, tiers_from_map, tiers_from_scores

TierMap = Mapping[Hashable, int]  # item -> tier (0 = best)


def _relation(ranking: TierMap, x: Hashable, y: Hashable) -> int:
    """+1 if x is preferred to y, -1 if y to x, 0 for a tie."""
    return (ranking[x] < ranking[y]) - (ranking[x] > ranking[y])


def _common_pairs(a: TierMap, b: TierMap) -> list[tuple]:
    items = sorted(set(a) & set(b), key=repr)
    return list(combinations(items, 2))


def pairwise_agreement(a: TierMap, b: TierMap) -> float | None:
    """Fraction of shared item pairs with the same relation in both rankings; None with fewer than 2 items."""
    pairs = _common_pairs(a, b)
    if not pairs:
        return None
    return sum(_relation(a, x, y) == _relation(b, x, y) for x, y in pairs) / len(pairs)


def kendall_tau_b(a: TierMap, b: TierMap) -> float | None:
    """Kendall's τ-b over the shared items; None when either ranking ties every pair (undefined)."""
    pairs = _common_pairs(a, b)
    concordant = discordant = ties_a = ties_b = 0
    for x, y in pairs:
        ra, rb = _relation(a, x, y), _relation(b, x, y)
        ties_a += ra == 0
        ties_b += rb == 0
        if ra and rb:
            concordant += ra == rb
            discordant += ra != rb
    n0 = len(pairs)
    denominator = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    return (concordant - discordant) / denominator if denominator else None


def mid_ranks(ranking: TierMap) -> dict[Hashable, float]:
    """Tiers as fractional ranks 1..K, tied items sharing the mean of their positions.

    >>> mid_ranks({"a": 0, "b": 0, "c": 1})
    {'a': 1.5, 'b': 1.5, 'c': 3.0}
    """
    by_tier: dict[int, list] = defaultdict(list)
    for item, tier in ranking.items():
        by_tier[tier].append(item)
    out, position = {}, 1
    for tier in sorted(by_tier):
        members = by_tier[tier]
        mean = position + (len(members) - 1) / 2
        for item in members:
            out[item] = mean
        position += len(members)
    return out


def _coincidences(units: Iterable[Sequence]) -> dict[tuple, float]:
    """Coincidence matrix o_ck: every ordered pair of values within a unit, weighted 1/(m_u - 1)."""
    o: dict[tuple, float] = defaultdict(float)
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue  # a unit coded once carries no information about agreement
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    o[(c, k)] += 1.0 / (m - 1)
    return o


def krippendorff_alpha(units: Iterable[Sequence], *, metric: str = "ordinal") -> float | None:
    """Krippendorff's α; ``units`` is one sequence of values per unit (None = not coded by that coder).

    α = 1 − D_o / D_e, D_o = Σ_ck o_ck δ²_ck / n and D_e = Σ_ck n_c n_k δ²_ck / (n (n − 1)), where n_c are
    the value totals of the coincidence matrix. Ordinal: δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)².
    None when fewer than two values are pairable or every value is the same (D_e = 0).
    """
    return alpha_from_coincidences(_coincidences(units), metric=metric)


def alpha_from_coincidences(o: Mapping[tuple, float], *, metric: str = "ordinal") -> float | None:
    """Krippendorff's α from the coincidence matrix ``{(c, k): o_ck}`` (``_coincidences``); the sums run in the
    matrix's insertion order, so equal matrices give equal α to the last bit."""
    totals: dict = defaultdict(float)
    for (c, _k), count in o.items():
        totals[c] += count
    n = sum(totals.values())
    values = sorted(totals)
    if n <= 1 or len(values) < 2:
        return None
    delta2 = _difference_function(metric, values, totals)
    observed = sum(count * delta2(c, k) for (c, k), count in o.items())
    expected = sum(totals[c] * totals[k] * delta2(c, k) for c in values for k in values) / (n - 1)
    return 1.0 - observed / expected if expected else None


def _difference_function(metric: str, values: list, totals: Mapping):
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: float(c - k) ** 2
    if metric == "ordinal":
        index = {v: i for i, v in enumerate(values)}
        cumulative = [0.0]
        for v in values:
            cumulative.append(cumulative[-1] + totals[v])

        def ordinal(c, k):
            lo, hi = sorted((index[c], index[k]))
            return (cumulative[hi + 1] - cumulative[lo] - (totals[c] + totals[k]) / 2) ** 2

        return ordinal
    raise ValueError(f"unknown metric {metric!r}; expected nominal, ordinal or interval")


def bradley_terry(
    comparisons: Iterable[tuple[Hashable, Hashable, float]], *, items: Iterable[Hashable] = (), prior: float = 0.5,
    iterations: int = 200, tolerance: float = 1e-10,
) -> dict[Hashable, float]:
    """Bradley-Terry log-strengths (mean 0) from ``(winner, loser, weight)``; a tie is passed as two
    half-weight comparisons. P(i ≻ j) = p_i / (p_i + p_j).

    MM update (Hunter 2004, eq. 3): p_i ← W_i / Σ_j n_ij / (p_i + p_j), W_i = wins of i, n_ij = comparisons
    of i and j. ``prior`` adds that many virtual wins each way to every pair of ``items`` (a Beta-like
    smoothing), so strengths stay finite and a pair nobody compared stays even.

    >>> s = bradley_terry([("a", "b", 1.0)] * 3 + [("b", "a", 1.0)], prior=0.5)
    >>> round(math.exp(s["a"] - s["b"]), 6)  # two items: the odds are the smoothed win ratio 3.5 / 1.5
    2.333333
    """
    wins: dict = defaultdict(float)
    n: dict = defaultdict(float)
    everyone = set(items)
    for winner, loser, weight in comparisons:
        wins[winner] += weight
        n[frozenset((winner, loser))] += weight
        everyone.update((winner, loser))
    everyone = sorted(everyone, key=repr)
    if prior:
        for x, y in combinations(everyone, 2):
            wins[x] += prior
            wins[y] += prior
            n[frozenset((x, y))] += 2 * prior
    neighbours: dict = defaultdict(list)  # i -> [(j, n_ij)]
    for pair, count in n.items():
        if len(pair) == 2:
            x, y = tuple(pair)
            neighbours[x].append((y, count))
            neighbours[y].append((x, count))
    strength = {i: 1.0 for i in everyone}
    for _ in range(iterations):
        updated = {}
        for i in everyone:
            denominator = sum(count / (strength[i] + strength[j]) for j, count in neighbours[i])
            updated[i] = wins[i] / denominator if denominator else strength[i]
        scale = math.exp(statistics.fmean(math.log(max(v, 1e-300)) for v in updated.values())) if updated else 1.0
        updated = {i: v / scale for i, v in updated.items()}  # fix the scale: geometric mean 1
        change = max((abs(updated[i] - strength[i]) for i in everyone), default=0.0)
        strength = updated
        if change < tolerance:
            break
    return {i: math.log(max(v, 1e-300)) for i, v in strength.items()}


def comparisons_from_rankings(rankings: Iterable[TierMap], weights: Iterable[float] | None = None) -> list[tuple]:
    """Every ranking's pairs as ``(winner, loser, weight)`` (``preferences.tiers.pairs_from_tiers``); a tie
    (``tied_pairs``) becomes two half-weight comparisons."""
    out = []
    weights = list(weights) if weights is not None else None
    for r, ranking in enumerate(rankings):
        weight = weights[r] if weights is not None else 1.0
        tiers = tiers_from_map(ranking)
        out.extend((chosen, rejected, weight) for chosen, rejected, _ in pairs_from_tiers(tiers))
        for x, y in tied_pairs(tiers):
            out.extend([(x, y, weight / 2), (y, x, weight / 2)])
    return out


def tiers_from_strengths(strengths: Mapping[Hashable, float], *, tie_tolerance: float = 1e-6) -> dict:
    """``{item: tier}`` by strength, best first, by the one tie rule (``preferences.tiers.tiers_from_scores``):
    a strength within ``tie_tolerance`` of its tier's best shares that tier."""
    return tier_map(tiers_from_scores(strengths, tie_threshold=tie_tolerance))


def consensus(rankings: Sequence[TierMap], weights: Sequence[float] | None = None, *, prior: float = 0.5) -> dict:
    """Bradley-Terry consensus of one prompt: ``{"strengths": {item: log p}, "tiers": {item: tier}}``."""
    items = {item for ranking in rankings for item in ranking}
    strengths = bradley_terry(comparisons_from_rankings(rankings, weights), items=items, prior=prior)
    return {"strengths": strengths, "tiers": tiers_from_strengths(strengths)}


def position_bias(rankings: Iterable[tuple[TierMap, Mapping[Hashable, int]]]) -> dict:
    """How often the earlier-shown response of a strict pair was preferred, from ``(tiers, shown position)``.

    Returns ``{"pairs": n, "earlier_preferred": rate or None, "z": binomial z against 0.5 or None}``;
    a labeler who ignores position gives about 0.5, one who always keeps the shown order gives 1.0.
    """
    earlier = total = 0
    for tiers, shown in rankings:
        for x, y in combinations(sorted(tiers, key=repr), 2):
            relation = _relation(tiers, x, y)
            if relation == 0 or shown[x] == shown[y]:
                continue
            preferred = x if relation > 0 else y
            other = y if preferred == x else x
            earlier += shown[preferred] < shown[other]
            total += 1
    if not total:
        return {"pairs": 0, "earlier_preferred": None, "z": None}
    rate = earlier / total
    return {"pairs": total, "earlier_preferred": rate, "z": (earlier - total / 2) / math.sqrt(total / 4)}


def speed_flags(times: Mapping[Hashable, float], *, reference: float | None = None, ratio: float = 0.25) -> dict:
    """``{key: True}`` for every time below ``ratio`` × ``reference`` (default: the median of ``times``).

    >>> speed_flags({"r1": 30_000, "r2": 25_000, "r3": 2_000, "r4": 28_000})
    {'r1': False, 'r2': False, 'r3': True, 'r4': False}
    """
    if not times:
        return {}
    reference = statistics.median(times.values()) if reference is None else reference
    return {key: value < ratio * reference for key, value in times.items()}


def reliability_weight(agreeing: float, total: float, *, prior_agree: float = 3.0, prior_total: float = 4.0,
                       floor: float = 0.05) -> tuple[float, float]:
    """(reliability, weight) from pairwise agreement counts with consensus and gold.

    reliability = (agreeing + 3) / (total + 4): a Beta-smoothed agreement rate that starts at 0.75 and moves
    towards the observed rate as evidence grows. weight = clip(2 · reliability − 1, floor, 1): a labeler at
    chance (0.5) counts ``floor``, one who always agrees counts 1.

    >>> reliability_weight(0, 0)
    (0.75, 0.5)
    >>> reliability_weight(96, 96)
    (0.99, 0.98)
    """
    reliability = (agreeing + prior_agree) / (total + prior_total)
    weight = min(1.0, max(floor, 2 * reliability - 1))
    return round(reliability, 6), round(weight, 6)


WEIGHT_PRIOR_PAIRS = 20.0  # shrinkage strength: the prior (weight 1) counts as this many compared pairs


def shrunk_weight(weight: float, evidence: float, *, prior_pairs: float = WEIGHT_PRIOR_PAIRS,
                  floor: float = 0.05) -> float:
    """A weight shrunk toward 1 when its evidence is thin: (n · w + m · 1) / (n + m), n = pairs compared,
    m = ``prior_pairs``: the posterior mean of a normal model whose prior says "trust the labeler" with the
    weight of m = 20 pairs (about 3 prompts at K = 4). With no evidence the weight is 1; with 20 pairs halfway
    between w and 1; with 1,000 pairs ≈ w.

    >>> shrunk_weight(0.05, 0)
    1.0
    >>> shrunk_weight(0.05, 20)
    0.525
    >>> round(shrunk_weight(0.05, 980), 4)
    0.069
    """
    if evidence <= 0:
        return 1.0
    shrunk = (evidence * weight + prior_pairs) / (evidence + prior_pairs)
    return round(min(1.0, max(floor, shrunk)), 6)


def agreement_counts(ranking: TierMap, reference: TierMap) -> tuple[int, int]:
    """(agreeing pairs, shared pairs) between one ranking and a reference (e.g. gold); a tie must match a tie."""
    pairs = _common_pairs(ranking, reference)
    return sum(_relation(ranking, x, y) == _relation(reference, x, y) for x, y in pairs), len(pairs)


def majority_agreement_counts(
    ranking: TierMap, others: Sequence[TierMap], weights: Sequence[float] | None = None
) -> tuple[int, int]:
    """(agreeing, counted) pairs between ``ranking`` and the weighted majority of ``others`` on each pair.

    For every item pair the others vote Σ w·relation; pairs where that sum is 0 (the others tie or cancel
    out) carry no verdict and are not counted. The leave-one-out reference for a labeler's reliability.

    >>> majority_agreement_counts({1: 0, 2: 1}, [{1: 0, 2: 1}, {1: 1, 2: 0}], [1.0, 0.2])
    (1, 1)
    >>> majority_agreement_counts({1: 0, 2: 1}, [{1: 0, 2: 1}, {1: 1, 2: 0}])
    (0, 0)
    """
    weights = list(weights) if weights is not None else [1.0] * len(others)
    agreeing = counted = 0
    for x, y in combinations(sorted(ranking, key=repr), 2):
        vote = sum(w * _relation(o, x, y) for o, w in zip(others, weights) if x in o and y in o)
        if abs(vote) < 1e-12:
            continue
        counted += 1
        agreeing += _relation(ranking, x, y) == (1 if vote > 0 else -1)
    return agreeing, counted
