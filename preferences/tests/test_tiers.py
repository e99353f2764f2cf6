"""The ranking rules: scores → tiers (one tie rule), tiers → pairs with ties and margins, the other shapes."""
import doctest
from math import comb

import pytest

from preferences import tiers as tiers_module
from preferences.tiers import (
    pairs_from_tiers,
    tied_pairs,
    tier_map,
    tiers_from_map,
    tiers_from_scores,
    tiers_normalize,
)


def test_doctests():
    assert doctest.testmod(tiers_module).failed == 0


def test_strict_order_gives_all_pairs_with_tier_distance_margins():
    pairs = pairs_from_tiers([[14], [11], [13], [12]])
    assert len(pairs) == comb(4, 2)
    assert (14, 12, 3) in pairs and (11, 13, 1) in pairs and (13, 12, 1) in pairs
    assert all(margin >= 1 for _, _, margin in pairs)


@pytest.mark.parametrize(
    "tiers, expected_pairs",
    [
        ([[11, 12], [13], [14]], comb(4, 2) - 1),
        ([[11, 12], [13, 14]], comb(4, 2) - 2),
        ([[11], [12, 13, 14]], comb(4, 2) - 3),
        ([[11, 12, 13, 14]], 0),
    ],
)
def test_each_tie_removes_one_pair(tiers, expected_pairs):
    pairs = pairs_from_tiers(tiers)
    assert len(pairs) == expected_pairs
    tier_of = {s: i for i, tier in enumerate(tiers) for s in tier}
    for chosen, rejected, margin in pairs:
        assert margin == tier_of[rejected] - tier_of[chosen] > 0




def test_tiers_from_scores_ties_within_threshold_of_the_tier_best():
    scores = {11: 1.0, 12: 0.95, 13: 0.88, 14: 0.2}
    assert tiers_from_scores(scores, tie_threshold=0.1) == [[11, 12], [13], [14]]
    assert tiers_from_scores(scores, tie_threshold=0.0) == [[11], [12], [13], [14]]
    assert tiers_from_scores(scores, tie_threshold=1.0) == [[11, 12, 13, 14]]


def test_normalized_tiers_ignore_order_within_a_tier():
    assert tiers_normalize([[12, 11], [13]]) == tiers_normalize([[11, 12], [13]])
    assert tiers_normalize([[11], [12, 13]]) != tiers_normalize([[11, 12], [13]])


def test_the_tie_rule_compares_with_the_tier_best_not_the_neighbour():
    # A neighbour rule would chain all four (each step is 0.04 < 0.05); the tier's best bounds the spread.
    scores = {1: 0.90, 2: 0.86, 3: 0.82, 4: 0.78}
    tiers = tiers_from_scores(scores, tie_threshold=0.05)
    assert tiers == [[1, 2], [3, 4]]
    assert all(scores[t[0]] - scores[t[-1]] <= 0.05 for t in tiers)


def test_the_tie_rule_is_inclusive_so_equal_scores_tie_at_threshold_zero():
    assert tiers_from_scores({5: 0.5, 3: 0.5, 4: 0.1}, tie_threshold=0.0) == [[3, 5], [4]]
    assert tiers_from_scores({0: 0.1, 1: 0.9, 2: 0.12, 3: 0.5}, tie_threshold=0.05) == [[1], [3], [2, 0]]
    assert tiers_from_scores({0: 1.0, 1: 2.0}, tie_threshold=0.0) == [[1], [0]]
    assert tiers_from_scores({}, tie_threshold=0.1) == []


def test_tied_pairs_are_the_pairs_pairs_from_tiers_leaves_out():
    tiers = [[11, 12], [13], [14, 15, 16]]
    strict = {(a, b) for a, b, _ in pairs_from_tiers(tiers)}
    tied = set(tied_pairs(tiers))
    assert tied == {(11, 12), (14, 15), (14, 16), (15, 16)}
    assert len(strict) + len(tied) == comb(6, 2) and not strict & tied


@pytest.mark.parametrize("tiers", [[[11], [12, 13], [14]], [["a", "b"]], [[3], [1], [2]]])
def test_tier_map_and_back(tiers):
    assert tiers_from_map(tier_map(tiers)) == tiers
