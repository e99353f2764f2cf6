"""Rankings as tiers: scores → tiers, tiers → pairs, and the other shapes a ranking takes.

A ranking is a list of tiers, best first; each tier lists items (sample ids, or indices of a group's
responses), and items in one tier are tied. Tier index = rank, so the pair (a in tier i, b in tier j, i < j)
has margin j - i:

    >>> pairs_from_tiers([[11], [12, 13], [14]])
    [(11, 12, 1), (11, 13, 1), (11, 14, 2), (12, 14, 1), (13, 14, 1)]

K items give C(K,2) pairs minus one for every tied pair (here C(4,2) - 1 = 5).

The tie rule (``tiers_from_scores``): an item joins the current tier when its score is within
``tie_threshold`` of that tier's *best* score (inclusive, ``best - score <= tie_threshold``); otherwise it
opens a new tier. Why this rule and not "within the threshold of the neighbour": comparing with the tier's
best bounds every tier's spread by the threshold, so items whose scores differ by more than it are never
tied, while the neighbour rule chains (0.90, 0.86, 0.82, 0.78 at threshold 0.05 would all tie although the
ends differ by 0.12). Inclusive, so a threshold of 0 ties exactly equal scores — a labeler with no
preference between two responses says so instead of being given an arbitrary order.

    >>> tiers_from_scores({1: 0.90, 2: 0.86, 3: 0.82, 4: 0.78}, tie_threshold=0.05)
    [[1, 2], [3, 4]]
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import TypeVar

Item = TypeVar("Item", bound=Hashable)
Tiers = list[list[Item]]
Pair = tuple[Item, Item, int]  # (chosen, rejected, margin = tier distance)


def tiers_from_scores(scores: Mapping[Item, float], *, tie_threshold: float) -> list[list[Item]]:
    """Items grouped by score, best first, with the tie rule above; equal scores order by item.

    >>> tiers_from_scores({1: 0.9, 2: 0.85, 3: 0.1}, tie_threshold=0.1)
    [[1, 2], [3]]
    >>> tiers_from_scores({0: 0.1, 1: 0.9, 2: 0.12, 3: 0.5}, tie_threshold=0.05)
    [[1], [3], [2, 0]]
    """
    ordered = sorted(scores, key=lambda item: (-scores[item], item))
    tiers: list[list[Item]] = []
    tier_best = 0.0
    for item in ordered:
        if tiers and tier_best - scores[item] <= tie_threshold:
            tiers[-1].append(item)
        else:
            tiers.append([item])
            tier_best = scores[item]
    return tiers


def pairs_from_tiers(tiers: Sequence[Sequence[Item]]) -> list[tuple[Item, Item, int]]:
    """Every (better, worse, tier distance) pair; items in the same tier give no pair (a tie)."""
    pairs = []
    for i, better_tier in enumerate(tiers):
        for j in range(i + 1, len(tiers)):
            for chosen in better_tier:
                for rejected in tiers[j]:
                    pairs.append((chosen, rejected, j - i))
    return pairs


def tied_pairs(tiers: Sequence[Sequence[Item]]) -> list[tuple[Item, Item]]:
    """Every pair of items that share a tier, in tier order: the pairs ``pairs_from_tiers`` leaves out.

    >>> tied_pairs([[11], [12, 13, 14]])
    [(12, 13), (12, 14), (13, 14)]
    """
    return [pair for tier in tiers for pair in combinations(tier, 2)]


def tiers_normalize(tiers: Sequence[Sequence[int]]) -> list[list[int]]:
    """Tiers with each tier sorted: two rankings are the same iff their normalized tiers are equal."""
    return [sorted(int(s) for s in tier) for tier in tiers]


def tier_map(tiers: Sequence[Sequence[Item]]) -> dict[Item, int]:
    """The ranking as ``{item: tier index}`` (0 = best), the shape the label-quality metrics take.

    >>> tier_map([[11], [12, 13]])
    {11: 0, 12: 1, 13: 1}
    """
    return {item: index for index, tier in enumerate(tiers) for item in tier}


def tiers_from_map(ranking: Mapping[Item, int]) -> list[list[Item]]:
    """``{item: tier}`` back to tiers, best first, each tier in the map's order; gaps in the tier numbers close.

    >>> tiers_from_map({"b": 2, "a": 0, "c": 2})
    [['a'], ['b', 'c']]
    """
    grouped: dict[int, list[Item]] = {}
    for item, tier in ranking.items():
        grouped.setdefault(tier, []).append(item)
    return [grouped[tier] for tier in sorted(grouped)]
