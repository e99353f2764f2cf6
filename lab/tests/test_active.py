"""Active selection: recorded choices set queue order; the active-vs-random comparison prints both curves."""
import math
import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from lab.active.compare import (
    aggregate_seeds, label_ratio, label_saving, mean_se, pair_uncertainty, paired_saving, savings_summary,
)
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


def _run(random_acc: list[float], active_acc: list[float], per_round: int = 10) -> dict:
    """One seed's compare_selection result built from accuracies per round (comparisons 10, 20, ...)."""
    curves = {name: [{"round": i + 1, "comparisons": per_round * (i + 1), "accuracy": a} for i, a in enumerate(accs)]
              for name, accs in (("random", random_acc), ("uncertainty", active_acc))}
    return {"curves": curves, "held_out_prompts": 5, **label_ratio(curves)}


def test_mean_se_by_hand():
    assert mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))  # sd 1, n 3
    assert mean_se([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_se([])


def test_label_saving_counts_a_run_that_never_reached_the_target_as_zero():
    assert label_saving(_run([0.5, 0.6, 0.7, 0.8], [0.5, 0.8, 0.8, 0.9])) == pytest.approx(0.5)  # 20 of 40
    assert label_saving(_run([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.79])) == 0.0
    assert label_saving(_run([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8])) == 0.0  # reached with all 40


def test_aggregate_seeds_means_standard_errors_and_labels_to_reach():
    runs = [_run([0.5, 0.6, 0.7, 0.8], [0.5, 0.8, 0.8, 0.9]),    # reached at 20: saves 0.5, final gap +0.1
            _run([0.6, 0.7, 0.7, 0.9], [0.6, 0.7, 0.9, 0.85]),   # reached at 30: saves 0.25, gap −0.05
            _run([0.4, 0.6, 0.8, 0.8], [0.4, 0.5, 0.6, 0.7])]    # never: saves 0, gap −0.1
    result = aggregate_seeds(runs)
    second = result["curves"]["uncertainty"][1]
    assert second["comparisons"] == 20 and second["accuracy"] == pytest.approx(2.0 / 3)
    deviations = [0.8 - 2 / 3, 0.7 - 2 / 3, 0.5 - 2 / 3]  # round 2 of the three runs
    assert second["se"] == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 2 / 3))
    assert result["target_accuracy"] == pytest.approx((0.8 + 0.9 + 0.8) / 3)
    assert result["reached"] == 2 and result["n_runs"] == 3
    assert result["labels_to_reach"] == 25  # mean over the runs that reached it: (20 + 30) / 2
    assert result["random_comparisons"] == 40
    assert result["saving"] == pytest.approx(0.25) and result["saving_se"] == pytest.approx(0.25 / math.sqrt(3))
    assert result["final_gap"] == pytest.approx(-0.05 / 3)
    # paired: to the lower final accuracy, (random's labels − active's) / 40: (40−20), (40−30), (30−40)
    assert result["paired_saving"] == pytest.approx(0.5 / 3)
    assert result["paired_saving_se"] == pytest.approx(mean_se([0.5, 0.25, -0.25])[1])
    assert result["wins"] is False  # 0.167 − 2·0.220 < 0: the seeds' spread covers zero


def test_paired_saving_is_symmetric_where_label_saving_favours_whichever_is_called_active():
    run, swapped = _run([0.6, 0.8, 0.7], [0.6, 0.7, 0.75]), _run([0.6, 0.7, 0.75], [0.6, 0.8, 0.7])
    assert label_saving(run) == label_saving(swapped) == pytest.approx(1 / 3)  # both "save" a third
    assert paired_saving(run) == paired_saving(swapped) == 0.0  # both reach 0.7 with 20 comparisons
    worse = _run([0.4, 0.6, 0.8, 0.8], [0.4, 0.5, 0.6, 0.7])
    better = _run([0.4, 0.5, 0.6, 0.7], [0.4, 0.6, 0.8, 0.8])
    assert paired_saving(worse) == pytest.approx(-0.25) and paired_saving(better) == pytest.approx(0.25)
    assert label_saving(worse) == 0.0  # never reached random's 0.8: no saving, but no loss shown either


def test_savings_summary_wins_only_when_the_spread_clears_zero():
    steady = [_run([0.5, 0.6, 0.7, 0.8], [0.5, 0.8, 0.8, 0.9]), _run([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.85, 0.9]),
              _run([0.5, 0.6, 0.7, 0.8], [0.5, 0.8, 0.8, 0.9])]  # savings 0.5, 0.25, 0.5
    summary = savings_summary(steady)
    assert summary["saving"] == pytest.approx(1.25 / 3)
    assert summary["paired_saving"] == pytest.approx(1.25 / 3) and summary["wins"] is True  # 0.417 − 2·0.083 > 0
    assert savings_summary(steady[:1])["wins"] is False  # one run shows no spread
    assert savings_summary([_run([0.5, 0.8], [0.5, 0.7])] * 3)["wins"] is False  # never reached: saving 0 ± 0


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


def test_select_prompts_orders_at_random_by_default_and_says_what_each_strategy_saves(make_user, make_project):
    from annotation.quality.strategy_evidence import STRATEGY_EVIDENCE

    make_project(slug="cli", k=3, prompts=4, labelers=[make_user("lab")])
    out = StringIO()
    call_command("select_prompts", "--project", "cli", "--round", "1", stdout=out)
    assert SelectionRecord.objects.get().strategy == "random"
    assert f"random: {STRATEGY_EVIDENCE['random']}" in out.getvalue()


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
def test_compare_selection_over_seeds_and_utilities_prints_curves_and_the_saving():
    out = StringIO()
    call_command("compare_selection", "--demo-task", "24", "--rounds", "2", "--batch", "6", "--steps", "6",
                 "--seeds", "0", "1", "--utilities", "two_clauses", "demo_utility", stdout=out)
    text = out.getvalue()
    for name in ("two_clauses", "demo_utility"):
        for seed in (0, 1):  # a progress line per round and per run
            assert f"{name} seed {seed} uncertainty round 2: 12 prompts, 72 comparisons" in text
            assert f"{name} seed {seed} done: random final" in text
        assert f"== {name}: 2 seeds (0 1)" in text and f"{name} saving: active reached random's final" in text
    lines = text.splitlines()
    rows = [line.split() for line in lines[lines.index(next(l for l in lines if l.startswith("== summary"))) + 2:]]
    assert [row[0] for row in rows] == ["two_clauses", "demo_utility", "all"]
    assert rows[2][:2] == ["all", "runs"] and rows[2][2].endswith("/4")  # pooled: 2 utilities × 2 seeds
    with pytest.raises(CommandError, match="rounds of"):
        call_command("compare_selection", "--demo-task", "8", "--rounds", "3", "--batch", "6", stdout=StringIO())
    with pytest.raises(CommandError, match="unknown utilities"):
        call_command("compare_selection", "--demo-task", "8", "--utilities", "vibes", stdout=StringIO())


def test_the_saving_shown_beside_the_choice_is_the_one_measured_in_the_docs():
    from annotation.quality.strategy_evidence import STRATEGY_EVIDENCE, UNCERTAINTY_PAIRED_SAVING

    doc = (Path(__file__).resolve().parents[2] / "docs" / "quality.md").read_text()
    section = doc[doc.index("## Active vs random, measured"):]
    summary_rows = {tokens[0]: tokens for tokens in (line.split() for line in section.splitlines())
                    if len(tokens) >= 12 and re.fullmatch(r"\d+/\d+", tokens[1])}  # utility, reached, …
    assert len(UNCERTAINTY_PAIRED_SAVING) >= 2
    for utility, (saving, se) in UNCERTAINTY_PAIRED_SAVING.items():
        assert summary_rows[utility][6:9] == [saving, "±", se], utility  # the "paired (± se)" column
    assert f"5 seeds × {len(UNCERTAINTY_PAIRED_SAVING)} utilities" in STRATEGY_EVIDENCE["uncertainty"]
