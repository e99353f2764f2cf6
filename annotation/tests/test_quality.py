"""Pure quality metrics against hand-computed values and a worked example from the literature."""
import math

import pytest

from annotation.quality import metrics as quality

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units, missing
# values; the paper gives α_nominal = 0.743, α_ordinal = 0.815, α_interval = 0.849.
A = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
B = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
C = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
D = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]
UNITS = list(zip(A, B, C, D))


@pytest.mark.parametrize("metric, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_matches_the_worked_example(metric, expected):
    assert quality.krippendorff_alpha(UNITS, metric=metric) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_perfect_and_undefined():
    assert quality.krippendorff_alpha([(1, 1), (2, 2), (3, 3)]) == pytest.approx(1.0)
    assert quality.krippendorff_alpha([(1, 1), (1, 1)]) is None  # one value only: D_e = 0
    assert quality.krippendorff_alpha([(1, None), (2,)]) is None  # nothing pairable
    # two coders who disagree systematically: alpha below 0
    assert quality.krippendorff_alpha([(1, 2), (2, 1)], metric="ordinal") < 0
    with pytest.raises(ValueError, match="unknown metric"):
        quality.krippendorff_alpha(UNITS, metric="ratio-ish")


def test_pairwise_agreement_and_tau_b_by_hand():
    a = {1: 0, 2: 1, 3: 2, 4: 3}
    b = {1: 0, 2: 2, 3: 1, 4: 3}  # one of 6 pairs swapped
    assert quality.pairwise_agreement(a, b) == pytest.approx(5 / 6)
    assert quality.kendall_tau_b(a, b) == pytest.approx((5 - 1) / 6)
    reverse = {1: 3, 2: 2, 3: 1, 4: 0}
    assert quality.pairwise_agreement(a, reverse) == 0.0
    assert quality.kendall_tau_b(a, reverse) == pytest.approx(-1.0)


def test_tau_b_with_ties_by_hand():
    # a: 1 > 2 = 3;  b: 1 = 2 > 3.  Pairs (1,2): a +, b tie; (1,3): +,+ concordant; (2,3): tie, +.
    a = {1: 0, 2: 1, 3: 1}
    b = {1: 0, 2: 0, 3: 1}
    # n0 = 3, ties_a = 1, ties_b = 1, nc = 1, nd = 0 -> tau_b = 1 / sqrt(2 * 2) = 0.5
    assert quality.kendall_tau_b(a, b) == pytest.approx(0.5)
    assert quality.pairwise_agreement(a, b) == pytest.approx(1 / 3)
    assert quality.kendall_tau_b({1: 0, 2: 0}, {1: 0, 2: 1}) is None  # all tied in a: undefined
    assert quality.pairwise_agreement({1: 0}, {1: 0}) is None


def test_bradley_terry_two_items_gives_smoothed_win_ratio():
    strengths = quality.bradley_terry([("a", "b", 1.0)] * 3 + [("b", "a", 1.0)], prior=0.5)
    assert math.exp(strengths["a"] - strengths["b"]) == pytest.approx(3.5 / 1.5, rel=1e-6)
    assert strengths["a"] + strengths["b"] == pytest.approx(0.0, abs=1e-9)


def test_bradley_terry_recovers_a_transitive_order_and_keeps_unseen_items_even():
    rankings = [{"x": 0, "y": 1, "z": 2}, {"x": 0, "y": 2, "z": 1}, {"x": 1, "y": 0, "z": 2}]
    result = quality.consensus(rankings)
    assert result["tiers"]["x"] == 0
    assert result["strengths"]["x"] > result["strengths"]["y"] > result["strengths"]["z"]
    alone = quality.bradley_terry([], items=["p", "q"])
    assert alone["p"] == pytest.approx(alone["q"])
    # a tie counts half a win each way: equal strengths, one shared consensus tier
    tied = quality.consensus([{"p": 0, "q": 0}])
    assert tied["tiers"] == {"p": 0, "q": 0}


def test_weighted_consensus_follows_the_reliable_labeler():
    good, bad = {"a": 0, "b": 1}, {"a": 1, "b": 0}
    assert quality.consensus([good, bad], weights=[1.0, 0.1])["tiers"] == {"a": 0, "b": 1}
    assert quality.consensus([good, bad], weights=[0.1, 1.0])["tiers"] == {"a": 1, "b": 0}


def test_position_bias_counts_earlier_shown_wins():
    shown = {"a": 0, "b": 1, "c": 2}
    always_first = [({"a": 0, "b": 1, "c": 2}, shown)] * 4  # 3 strict pairs each, earlier always wins
    result = quality.position_bias(always_first)
    assert result["pairs"] == 12 and result["earlier_preferred"] == 1.0
    assert result["z"] == pytest.approx((12 - 6) / math.sqrt(3))
    balanced = [({"a": 0, "b": 1}, {"a": 0, "b": 1}), ({"a": 0, "b": 1}, {"a": 1, "b": 0})]
    assert quality.position_bias(balanced)["earlier_preferred"] == 0.5
    assert quality.position_bias([({"a": 0, "b": 0}, {"a": 0, "b": 1})])["pairs"] == 0


def test_speed_flags_and_reliability_weight():
    assert quality.speed_flags({"r1": 100, "r2": 100, "r3": 10}) == {"r1": False, "r2": False, "r3": True}
    assert quality.speed_flags({"r1": 10}, reference=100, ratio=0.5) == {"r1": True}
    assert quality.speed_flags({}) == {}
    assert quality.reliability_weight(0, 0) == (0.75, 0.5)
    assert quality.reliability_weight(0, 96)[1] == 0.05  # always wrong: the floor
    reliability, weight = quality.reliability_weight(48, 96)  # chance
    assert reliability == pytest.approx(51 / 100) and weight == pytest.approx(0.05)
    assert quality.agreement_counts({1: 0, 2: 1, 3: 2}, {1: 0, 2: 2, 3: 1}) == (2, 3)
