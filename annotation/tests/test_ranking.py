"""Checks of a submitted ranking: tier validation, flags, the shown order (the rules themselves: preferences/tests)."""
import pytest

from annotation.errors import RankingInvalid
from annotation.ranking import flags_validate, shown_positions, tiers_validate

SAMPLES = [11, 12, 13, 14]


def test_valid_tiers_accept_digit_strings_from_json():
    assert tiers_validate(tiers=[["11", 12], [13, 14]], sample_ids=SAMPLES) == [[11, 12], [13, 14]]


@pytest.mark.parametrize(
    "tiers, location, words",
    [
        ([], "tiers", "non-empty"),
        ("11,12", "tiers", "non-empty"),
        ([[11, 12], [], [13, 14]], "tiers[1]", "empty tier"),
        ([[11, 12], [13], [14, 99]], "tiers[2][1]", "not a response to this prompt"),
        ([[11, 12], [13], [14, 11]], "tiers[2][1]", "more than once"),
        ([[11, 12], [13]], "tiers", "not ranked"),
        ([[11, True], [13, 14]], "tiers[0][1]", "expected a sample id"),
        ([[11, 12.5], [13, 14]], "tiers[0][1]", "expected a sample id"),
        ([11, 12, 13, 14], "tiers[0]", "list of sample ids"),
    ],
)
def test_invalid_tiers_name_the_problem_and_where(tiers, location, words):
    with pytest.raises(RankingInvalid) as info:
        tiers_validate(tiers=tiers, sample_ids=SAMPLES)
    assert info.value.location == location
    assert words in info.value.message


def test_flags_validated_deduplicated_and_empty_dropped():
    allowed = ["unsafe", "off_topic"]
    assert flags_validate(flags={"12": ["unsafe", "unsafe"], 13: []}, sample_ids=SAMPLES, allowed=allowed) == {
        12: ["unsafe"]
    }
    with pytest.raises(RankingInvalid, match="unknown flag"):
        flags_validate(flags={12: ["rude"]}, sample_ids=SAMPLES, allowed=allowed)
    with pytest.raises(RankingInvalid, match="not a response"):
        flags_validate(flags={99: ["unsafe"]}, sample_ids=SAMPLES, allowed=allowed)
    with pytest.raises(RankingInvalid, match="must be a list"):
        flags_validate(flags={12: "unsafe"}, sample_ids=SAMPLES, allowed=allowed)


def test_shown_positions_follow_the_shown_order_or_the_sample_order():
    assert shown_positions(shown_order=[13, 11, 14, 12], sample_ids=SAMPLES) == {13: 0, 11: 1, 14: 2, 12: 3}
    assert shown_positions(shown_order=None, sample_ids=SAMPLES) == {11: 0, 12: 1, 13: 2, 14: 3}
    with pytest.raises(RankingInvalid, match="exactly once"):
        shown_positions(shown_order=[11, 11, 12, 13], sample_ids=SAMPLES)
