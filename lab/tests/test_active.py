"""Active selection: recorded choices set queue order; the active-vs-random comparison prints both curves."""
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from lab.active.compare import label_ratio, pair_uncertainty
from lab.active.services import round_select
from annotation.errors import InvalidInput
from annotation.models import Prompt, Round
from annotation.quality.models import PromptPriority, SelectionRecord
from annotation.services import assignment_next_for_labeler
from annotation.tests.test_quality_services import rank_all


def test_pair_uncertainty_by_hand():
    assert pair_uncertainty([1.0, 1.0]) == 1.0
    p = 1 / (1 + 2.718281828459045 ** -2)  # sigma(2)
    assert pair_uncertainty([2.0, 0.0]) == pytest.approx(4 * p * (1 - p))
    assert pair_uncertainty([0.0]) == 0.0


def test_label_ratio():
    curves = {"random": [{"comparisons": 10, "accuracy": 0.6}, {"comparisons": 20, "accuracy": 0.7}],
              "uncertainty": [{"comparisons": 10, "accuracy": 0.72}, {"comparisons": 20, "accuracy": 0.8}]}
    assert label_ratio(curves)["label_ratio"] == 0.5
    curves["uncertainty"] = [{"comparisons": 10, "accuracy": 0.5}, {"comparisons": 20, "accuracy": 0.6}]
    assert label_ratio(curves)["label_ratio"] is None


def test_random_selection_is_recorded_and_orders_the_queue(make_user, make_project):
    labeler = make_user("lab")
    project = make_project(slug="act", k=3, prompts=6, labelers=[labeler])
    rnd = Round.objects.get(project=project)
    record = round_select(round_=rnd, strategy="random", seed=3)
    assert sorted(record.order) == sorted(Prompt.objects.filter(round=rnd).values_list("pk", flat=True))
    assert record.order != sorted(record.order)  # shuffled (seed 3 gives a different order)
    assert PromptPriority.objects.filter(selection=record).count() == 6
    assert assignment_next_for_labeler(project=project, labeler=labeler).prompt_id == record.order[0]
    again = round_select(round_=rnd, strategy="random", seed=3)
    assert again.order == record.order and PromptPriority.objects.count() == 6  # replaced, not duplicated
    assert SelectionRecord.objects.count() == 2  # every choice is kept as a record


def test_disagreement_selection_puts_contested_prompts_first(make_user, make_project):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    project = make_project(slug="dis", k=3, overlap=2, prompts=4, labelers=[alice, bob])
    rnd = Round.objects.get(project=project)
    rank_all(project, alice, )
    # bob agrees on all prompts but the last
    last = Prompt.objects.filter(round=rnd).order_by("id").last()
    from annotation.services import ranking_submit
    while (assignment := assignment_next_for_labeler(project=project, labeler=bob)) is not None:
        positions = dict(assignment.prompt.samples.values_list("pk", "position"))
        order = sorted(positions, key=positions.get, reverse=assignment.prompt_id != last.pk)
        ranking_submit(assignment_id=assignment.pk, labeler=bob, tiers=[[pk] for pk in order])
    record = round_select(round_=rnd, strategy="disagreement")
    assert record.order[0] == last.pk and record.scores[str(last.pk)] == 1.0
    with pytest.raises(InvalidInput, match="unknown strategy"):
        round_select(round_=rnd, strategy="vibes")
    with pytest.raises(InvalidInput, match="artifact"):
        round_select(round_=rnd, strategy="uncertainty")


@pytest.mark.slow
def test_compare_selection_prints_both_curves_and_the_ratio():
    out = StringIO()
    call_command("compare_selection", "--demo-task", "24", "--rounds", "2", "--batch", "6", "--steps", "6", stdout=out)
    text = out.getvalue()
    assert "random      round 2: 12 prompts" in text and "uncertainty round 2: 12 prompts" in text
    assert "held-out accuracy" in text and ("label ratio" in text or "did not reach" in text)
    with pytest.raises(CommandError, match="rounds of"):
        call_command("compare_selection", "--demo-task", "8", "--rounds", "3", "--batch", "6", stdout=StringIO())
