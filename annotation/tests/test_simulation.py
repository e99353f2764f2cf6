"""Scripted labelers and utility functions, end to end through ``simulate_labelers``."""
from io import StringIO
from math import comb

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotation.errors import InvalidInput
from annotation.models import Membership, PairwiseComparison, Ranking, RankingEntry
from annotation.simulation import labelers_simulate
from annotation.utility import default_utility, load_utility

QUESTION = [{"role": "user", "content": "How do plants make food from sunlight?"}]


def answer_number(prompt_messages: list[dict], response_text: str) -> float:
    """Test utility: fixture responses read "Answer J to question I."; a higher J is better."""
    return float(response_text.split()[1])


def test_default_utility_prefers_relevant_sized_unrepetitive_answers():
    relevant = "Plants make food from sunlight by photosynthesis: chlorophyll captures light to build sugar."
    off_topic = "The stock market closed higher today after a long and quiet trading session downtown."
    assert default_utility(QUESTION, relevant) > default_utility(QUESTION, off_topic)
    assert default_utility(QUESTION, relevant) > default_utility(QUESTION, "Plants.")
    assert default_utility(QUESTION, relevant) > default_utility(QUESTION, relevant + " sunlight" * 40)
    assert default_utility(QUESTION, relevant) > default_utility(QUESTION, " ".join([relevant] * 30))
    assert default_utility(QUESTION, relevant) == default_utility(QUESTION, relevant)  # deterministic


@pytest.mark.parametrize(
    "spec, words",
    [
        ("no_colon", "not a registered utility hook; choose one of: default, demo"),
        ("a:b:c", "expected 'module:function'"),
        (":default_utility", "expected 'module:function'"),
        ("annotation.no_such_module:f", "cannot import module"),
        ("annotation.utility:no_such_function", "has no attribute"),
        ("annotation.utility:IDEAL_WORDS", "is not callable"),
    ],
)
def test_load_utility_says_what_is_wrong(spec, words):
    with pytest.raises(InvalidInput, match=words):
        load_utility(spec)


def test_load_utility_resolves_module_function():
    assert load_utility("annotation.utility:default_utility") is default_utility
    assert load_utility(f"{__name__}:answer_number") is answer_number
    assert load_utility("default") is default_utility  # a registered name works on the command line too


@pytest.mark.django_db
def test_simulate_labelers_command_fills_every_slot(make_project):
    project = make_project(slug="sim", k=4, overlap=2, prompts=3)
    out = StringIO()
    call_command(
        "simulate_labelers", "--project", "sim", "--labelers", "3", "--utility", f"{__name__}:answer_number",
        "--noise", "0", "--seed", "1", stdout=out, stderr=StringIO(),
    )
    rankings = Ranking.objects.filter(prompt__project=project)
    assert rankings.count() == 3 * 2 and set(rankings.values_list("source", flat=True)) == {"simulated"}
    assert PairwiseComparison.objects.filter(prompt__project=project).count() == 6 * comb(4, 2)
    # Noise-free, the utility's order is the ranking: "Answer 3" first, "Answer 0" last.
    best = RankingEntry.objects.filter(ranking__in=rankings, tier=0).values_list("sample__position", flat=True)
    assert set(best) == {3}
    sims = get_user_model().objects.filter(username__startswith="sim-labeler-")
    assert sims.count() == 3 and not any(user.has_usable_password() for user in sims)
    assert Membership.objects.filter(project=project, user__in=sims, role="labeler").count() == 3
    assert "6 rankings" in out.getvalue() and "agreement with the noise-free utility 1.0" in out.getvalue()
    call_command("simulate_labelers", "--project", "sim", "--labelers", "3", stdout=StringIO(), stderr=StringIO())
    assert rankings.count() == 6  # nothing left: a rerun writes nothing


@pytest.mark.django_db
def test_simulation_ties_noise_and_limits(make_project):
    project = make_project(slug="ties", k=4, overlap=1, prompts=4)
    summary = labelers_simulate(project=project, num_labelers=2, utility=answer_number, noise=0.0,
                                tie_threshold=1.0, seed=0, max_prompts=2)
    # Scores 3, 2, 1, 0 with threshold 1: tiers [3, 2], [1, 0] -> 4 pairs and 2 ties per ranking.
    assert (summary["rankings"], summary["pairs"], summary["tied_pairs"]) == (2, 8, 4)
    assert Ranking.objects.filter(prompt__project=project).count() == 2
    noisy = labelers_simulate(project=project, num_labelers=2, utility=answer_number, noise=50.0,
                              tie_threshold=0.0, seed=3)
    assert noisy["rankings"] == 2 and 0.0 <= noisy["agreement"] <= 1.0
    # Noise 50x the score gaps reorders: over 20 rankings, all 20 in the clean order has chance 24^-20 (two
    # rankings alone agreed fully in a whole-suite run, where the responses' ids differ from a run of this file).
    many = make_project(slug="noisy", k=4, overlap=1, prompts=20)
    noisier = labelers_simulate(project=many, num_labelers=2, utility=answer_number, noise=50.0,
                                tie_threshold=0.0, seed=3)
    assert noisier["rankings"] == 20 and 0.0 <= noisier["agreement"] < 0.9


@pytest.mark.django_db
def test_simulate_labelers_command_errors(make_project):
    make_project(slug="err", k=2, prompts=1)
    with pytest.raises(CommandError, match="no project"):
        call_command("simulate_labelers", "--project", "missing", "--labelers", "1")
    with pytest.raises(CommandError, match="cannot import module"):
        call_command("simulate_labelers", "--project", "err", "--labelers", "1", "--utility", "nope.nope:f")
    with pytest.raises(CommandError, match="at least 1"):
        call_command("simulate_labelers", "--project", "err", "--labelers", "0")
    with pytest.raises(CommandError, match=">= 0"):
        call_command("simulate_labelers", "--project", "err", "--labelers", "1", "--noise", "-1")
    assert not Ranking.objects.exists()
