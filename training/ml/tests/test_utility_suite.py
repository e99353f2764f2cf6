"""The utility suite: each utility prefers what its shape says, and malformed replies lose (but in the
collapse-winnable one): they lose to, or tie with, the worst fluent reply."""
from training.ml import demo_task
from training.ml.utility_suite import COLLAPSE_WINNABLE, SET_ASIDE, SUITE

RIVER = demo_task.demo_prompt("river")
CASES = {  # utility: (preferred reply, worse reply)
    "two_clauses": ("the warm river glowed and the cold hill rested.", "the warm river glowed."),
    "no_dark_words": ("the warm river glowed.", "the cold river glowed."),
    "says_glowed": ("the cold hill glowed.", "the warm hill rested."),
    "dark_mood": ("the cold hill rested.", "the warm hill rested."),
    "noun_first": ("the cold river rested and the warm hill glowed.", "the warm hill glowed and the cold river rested."),
    "distinct_verbs": ("the cold river rested and the warm hill glowed and the kind road moved.",
                       "the cold river rested and the warm hill rested and the kind road rested."),
    "bright_and_long": ("the warm river glowed and the kind hill rested and the calm road moved.", "the warm river glowed."),
    "fewest_words": (".", "the warm river glowed."),
}


def test_every_utility_prefers_its_shape_and_malformed_replies_lose():
    assert set(SUITE) == set(CASES) and len(SUITE) >= 8
    assert len(SET_ASIDE) == len(SUITE) // 2 and set(SET_ASIDE) <= set(SUITE)
    for name, (better, worse) in CASES.items():
        utility = SUITE[name]
        assert utility(RIVER, better) > utility(RIVER, worse), name
        if name not in COLLAPSE_WINNABLE:
            assert utility(RIVER, "�$ golden village") == demo_task.MALFORMED <= utility(RIVER, worse), name
    assert SUITE["fewest_words"](RIVER, ".") > SUITE["fewest_words"](RIVER, "the warm river glowed.")
