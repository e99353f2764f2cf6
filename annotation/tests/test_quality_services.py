"""Quality control on PostgreSQL: report figures, gold mixing, exclusions, review and pair weights."""
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotation.errors import ImportRejected, InvalidInput, RankingInvalid
from annotation.exporters import export_preferences
from annotation.models import PairwiseComparison, Prompt, Ranking
from annotation.quality.models import GoldRanking, LabelerReliability, PromptReview, RankingExclusion
from annotation.quality.selectors import consensus_rows, quality_report
from annotation.quality.services import (
    gold_import, gold_set, pair_weights_update, prompt_review, quality_settings_update, ranking_exclude,
    ranking_include,
)
from annotation.services import assignment_next_for_labeler, ranking_submit


def rank_all(project, labeler, *, reverse=False, time_spent_ms=30_000):
    """Rank every prompt the labeler is given: best = highest position ("Answer 3"), or the reverse."""
    rankings = []
    while (assignment := assignment_next_for_labeler(project=project, labeler=labeler)) is not None:
        positions = dict(assignment.prompt.samples.values_list("pk", "position"))
        order = sorted(positions, key=lambda pk: positions[pk], reverse=not reverse)
        rankings.append(ranking_submit(assignment_id=assignment.pk, labeler=labeler, tiers=[[pk] for pk in order],
                                       time_spent_ms=time_spent_ms))
    return rankings


CAROL_WEIGHT = (30 * 0.05 + 20) / 50  # floor weight 0.05 on 30 pairs, shrunk toward 1 by 20 prior pairs


@pytest.fixture
def three_labelers(make_user, make_project):
    """K=4, overlap 3, 5 prompts; alice and bob rank by the answer number, carol in reverse and fast."""
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    project = make_project(slug="qc", k=4, overlap=3, prompts=5, labelers=[alice, bob, carol])
    rank_all(project, alice)
    rank_all(project, bob, time_spent_ms=40_000)
    rank_all(project, carol, reverse=True, time_spent_ms=1_000)
    return project, alice, bob, carol


def test_report_separates_the_contrarian(three_labelers):
    project, *_ = three_labelers
    report = quality_report(project=project)
    overall = report["overall"]
    assert overall["rankings"] == 15 and overall["comparisons"] == 15  # 5 prompts × C(3,2) ranking pairs
    assert overall["pairwise_agreement"] == pytest.approx(1 / 3, abs=1e-4)  # 1 of 3 ranking pairs agrees
    assert overall["kendall_tau_b"] == pytest.approx(-1 / 3, abs=1e-4)  # (+1 - 1 - 1) / 3
    assert overall["alpha_ordinal"] < 0.2
    rows = {row["labeler"]: row for row in report["labelers"]}
    assert rows["alice"]["consensus_agreement"] == 1.0 and rows["carol"]["consensus_agreement"] == 0.0
    # carol's raw weight is the floor; 30 compared pairs shrink it toward 1 by the prior's 20 pairs
    assert rows["alice"]["weight"] > 0.9 and rows["carol"]["raw_weight"] == 0.05
    assert rows["carol"]["evidence_pairs"] == 30 and rows["carol"]["weight"] == (30 * 0.05 + 20) / 50
    assert rows["carol"]["speed_flag"] and rows["carol"]["fast_rankings"] == 5 and not rows["alice"]["speed_flag"]
    assert rows["alice"]["position_bias"]["pairs"] == 30
    # every prompt has mean agreement 1/3 < 0.5: all five are in the review queue
    assert len(report["review_queue"]) == 5 and report["review_queue"][0]["agreement"] == pytest.approx(0.3333)
    assert report["timeline"]["comparisons"] == [15]


def test_agreement_with_identical_labelers_is_perfect(make_user, make_project):
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project(slug="same", k=3, overlap=2, prompts=3, labelers=[alice, bob])
    rank_all(project, alice)
    rank_all(project, bob)
    overall = quality_report(project=project)["overall"]
    assert overall["pairwise_agreement"] == 1.0 and overall["kendall_tau_b"] == 1.0 and overall["alpha_ordinal"] == 1.0
    assert quality_report(project=project)["review_queue"] == []


def test_pair_weights_are_written_and_exported_and_idempotent(three_labelers):
    project, alice, bob, carol = three_labelers
    weights = pair_weights_update(project=project)
    assert weights["carol"] == CAROL_WEIGHT and weights["alice"] > 0.9
    carol_pairs = PairwiseComparison.objects.filter(ranking__labeler=carol)
    assert set(carol_pairs.values_list("weight", flat=True)) == {CAROL_WEIGHT}
    assert LabelerReliability.objects.get(project=project, labeler=carol).consensus_pairs == 30
    assert pair_weights_update(project=project) == weights  # idempotent
    rows = [json.loads(line) for line in b"".join(export_preferences(project=project, fmt="pairs",
                                                                     file_format="jsonl")).splitlines()]
    assert {row["weight"] for row in rows if row["labeler"] == "carol"} == {CAROL_WEIGHT}


def test_gold_is_mixed_in_at_the_configured_rate_beyond_overlap(make_user, make_project):
    users = [make_user(f"l{i}") for i in range(3)]
    project = make_project(slug="gold", k=3, overlap=1, prompts=6, labelers=users)
    gold_prompt = Prompt.objects.filter(project=project).order_by("-id").first()  # last in queue order
    ids = list(gold_prompt.samples.order_by("position").values_list("pk", flat=True))
    gold_set(prompt=gold_prompt, tiers=[[ids[2]], [ids[1]], [ids[0]]])
    quality_settings_update(project=project, gold_rate=1.0)
    for user in users:  # every labeler's first task is the gold prompt, although overlap is 1
        assert assignment_next_for_labeler(project=project, labeler=user).prompt_id == gold_prompt.pk
    quality_settings_update(project=project, gold_rate=0.0)
    other = make_user("l9")
    project.memberships.create(user=other, role="labeler")
    assert assignment_next_for_labeler(project=project, labeler=other).prompt_id != gold_prompt.pk
    for user in users:
        rank_all(project, user)
    report = quality_report(project=project)
    assert report["gold_prompts"] == 1
    assert {row["labeler"]: row["gold_agreement"] for row in report["labelers"]}["l0"] == 1.0


def test_gold_import_is_all_or_nothing(make_project):
    project = make_project(slug="gi", k=3, prompts=2)
    first, second = Prompt.objects.filter(project=project).order_by("id")
    good = json.dumps({"prompt_id": first.pk, "ranking": [[2], [0, 1]]})
    with pytest.raises(ImportRejected, match="line 2") as error:
        gold_import(project=project, lines=[good, json.dumps({"prompt_id": second.pk, "ranking": [[0], [5]]})])
    assert "response indices" in str(error.value)
    with pytest.raises(ImportRejected, match="not ranked"):
        gold_import(project=project, lines=[json.dumps({"prompt_id": second.pk, "ranking": [[0], [1]]})])
    with pytest.raises(ImportRejected, match="no prompt"):
        gold_import(project=project, lines=['{"external_id": "nope", "ranking": [[0]]}'])
    assert GoldRanking.objects.count() == 0 and not Prompt.objects.filter(is_gold=True).exists()
    assert gold_import(project=project, lines=[good, ""]) == 1
    gold = GoldRanking.objects.get(prompt=first)
    positions = dict(first.samples.values_list("pk", "position"))
    assert [[positions[s] for s in tier] for tier in gold.tiers] == [[2], [0, 1]]
    assert gold_import(project=project, lines=[good]) == 1 and GoldRanking.objects.count() == 1  # idempotent


def test_exclusion_drops_rankings_from_exports_and_report(three_labelers):
    project, alice, bob, carol = three_labelers
    carol_ranking = Ranking.objects.filter(labeler=carol).first()
    with pytest.raises(InvalidInput, match="reason"):
        ranking_exclude(project=project, ranking_id=carol_ranking.pk, reason="  ")
    with pytest.raises(InvalidInput, match="no ranking"):
        ranking_exclude(project=project, ranking_id=10**9, reason="x")
    assert RankingExclusion.objects.count() == 0
    ranking_exclude(project=project, ranking_id=carol_ranking.pk, reason="contrarian")
    ranking_exclude(project=project, ranking_id=carol_ranking.pk, reason="again")  # idempotent
    assert RankingExclusion.objects.get().reason == "contrarian"
    exported = b"".join(export_preferences(project=project, fmt="pairs", file_format="jsonl")).splitlines()
    assert len(exported) == 14 * 6 and Ranking.objects.filter(pk=carol_ranking.pk).exists()
    assert quality_report(project=project)["overall"]["rankings"] == 14
    ranking_include(project=project, ranking_id=carol_ranking.pk)
    assert quality_report(project=project)["overall"]["rankings"] == 15


def test_review_adjudicates_and_leaves_the_queue(three_labelers):
    project, alice, bob, carol = three_labelers
    prompt_id = quality_report(project=project)["review_queue"][0]["prompt_id"]
    prompt = Prompt.objects.get(pk=prompt_id)
    ids = list(prompt.samples.order_by("position").values_list("pk", flat=True))
    carol_ranking = Ranking.objects.get(prompt=prompt, labeler=carol)
    with pytest.raises(RankingInvalid):
        prompt_review(prompt=prompt, tiers=[[ids[0]]])
    with pytest.raises(InvalidInput, match="not a ranking of prompt"):
        prompt_review(prompt=prompt, exclude_ranking_ids=[Ranking.objects.exclude(prompt=prompt).first().pk])
    assert not PromptReview.objects.exists()
    prompt_review(prompt=prompt, tiers=[[ids[3]], [ids[2]], [ids[1], ids[0]]], note="carol reversed",
                  exclude_ranking_ids=[carol_ranking.pk])
    assert RankingExclusion.objects.filter(ranking=carol_ranking).exists()
    report = quality_report(project=project)
    assert prompt_id not in [row["prompt_id"] for row in report["review_queue"]]
    rows = {row["prompt_id"]: row for row in consensus_rows(project=project)}
    assert rows[prompt_id]["basis"] == "adjudicated" and rows[prompt_id]["consensus_tiers"][0] == [ids[3]]
    other = next(row for pid, row in rows.items() if pid != prompt_id)
    assert other["basis"] == "bradley_terry" and other["rankings"] == 3


def test_settings_validation(make_project):
    project = make_project(slug="st", prompts=1)
    for bad, where in (({"gold_rate": 1.5}, "gold_rate"), ({"speed_ratio": 0}, "speed_ratio"),
                       ({"review_threshold": "x"}, "review_threshold"), ({"colour": 1}, "colour")):
        with pytest.raises(InvalidInput) as error:
            quality_settings_update(project=project, **bad)
        assert error.value.location == where
    assert quality_settings_update(project=project, gold_rate=0.2).gold_rate == 0.2


def test_quality_report_command(three_labelers):
    out = StringIO()
    call_command("quality_report", "--project", "qc", "--update-weights", stdout=out)
    text = out.getvalue()
    assert "pairwise agreement 0.3333" in text and "carol" in text and "weights written" in text
    out = StringIO()
    call_command("quality_report", "--project", "qc", "--json", stdout=out)
    assert json.loads(out.getvalue())["overall"]["rankings"] == 15
    with pytest.raises(CommandError, match="no project"):
        call_command("quality_report", "--project", "nope", stdout=StringIO())
