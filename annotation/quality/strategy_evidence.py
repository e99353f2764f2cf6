"""What each selection strategy is measured to save against random, shown beside the choice wherever a strategy
is chosen (the quality page, ``POST /api/projects/<slug>/quality/selections/``, ``select_prompts``).

Random stays the default until a strategy wins: saves labels on average with the seeds' spread (mean − 2
standard errors) clear of zero. The uncertainty figures are the output of ``compare_selection`` in
docs/quality.md ("Active vs random, measured"); change them only with a new measurement there
(``lab/tests/test_active.py`` checks that the doc prints them). No Django here.
"""
from __future__ import annotations

DEFAULT_STRATEGY = "random"

UNCERTAINTY_MEASURED = "PENDING"

STRATEGY_EVIDENCE = {
    "random": "the default: the baseline the others are measured against",
    "uncertainty": UNCERTAINTY_MEASURED,
    "disagreement": "not measured (it needs repeated human rankings; compare_selection simulates one per prompt)",
}
