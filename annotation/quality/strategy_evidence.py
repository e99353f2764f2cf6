"""What each selection strategy is measured to save against random, shown beside the choice wherever a strategy
is chosen (the quality page, ``/api/projects/<slug>/quality/selections/``, ``select_prompts``).

Random stays the default until a strategy wins: saves labels on average with the seeds' spread (mean − 2
standard errors) clear of zero. ``UNCERTAINTY_PAIRED_SAVING`` is copied from the summary rows ``compare_selection``
printed in docs/quality.md ("Active vs random, measured"); change it only with a new measurement there
(``lab/tests/test_active.py`` checks that the doc prints these figures). No Django here.
"""
from __future__ import annotations

DEFAULT_STRATEGY = "random"

# demo-task utility → (paired label saving, its standard error) over seeds 0–4, as printed: the fraction of
# random's labels uncertainty selection did not need to reach the lower of the two final accuracies
UNCERTAINTY_PAIRED_SAVING: dict[str, tuple[str, str]] = {
    "demo_utility": ("-0.080", "0.150"), "two_clauses": ("+0.080", "0.080"), "says_glowed": ("+0.000", "0.110"),
    "noun_first": ("-0.120", "0.120"), "dark_mood": ("+0.080", "0.102"), "distinct_verbs": ("-0.080", "0.233"),
    "fewest_words": ("+0.000", "0.000"), "no_dark_words": ("-0.040", "0.075"),
    "bright_and_long": ("+0.120", "0.162"),
}


def _uncertainty_evidence() -> str:
    savings = [float(saving) for saving, _ in UNCERTAINTY_PAIRED_SAVING.values()]
    wins = sum(float(saving) - 2 * float(se) > 0 for saving, se in UNCERTAINTY_PAIRED_SAVING.values())
    return (f"measured on the demo task, 5 seeds × {len(savings)} utilities: paired label saving "
            f"{min(savings):+.2f} to {max(savings):+.2f} of random's per utility, a win on {wins} of {len(savings)} "
            "(docs/quality.md, Active vs random)")


STRATEGY_EVIDENCE = {
    "random": "the default: the baseline the others are measured against",
    "uncertainty": _uncertainty_evidence(),
    "disagreement": "not measured (it needs repeated human rankings; compare_selection simulates one per prompt)",
}
