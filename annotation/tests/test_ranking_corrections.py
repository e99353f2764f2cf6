"""A labeler corrects or withdraws their last ranking (ranking_replace, ranking_withdraw), and a ranking's comment
and "all responses are bad" verdict: atomic, idempotent, slot counters kept right, bad input writes nothing."""
import pytest

from annotation.errors import RankingInvalid
from annotation.models import Assignment, PairwiseComparison, Prompt, Ranking, Round
from annotation.services import (
    MAX_COMMENT,
    WITHDRAWN_REASON,
    assignment_next_for_labeler,
    ranking_replace,
    ranking_submit,
    ranking_tiers,
    ranking_withdraw,
)

pytestmark = pytest.mark.django_db


def _slots(prompt_id: int) -> int:
    return Prompt.objects.get(pk=prompt_id).slots_taken


def _submit(project, labeler, **extra):
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    ranking = ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[s] for s in lease.shown_order], **extra)
    return lease, ranking


def _pairs(ranking) -> set[tuple[int, int, int]]:
    return set(PairwiseComparison.objects.filter(ranking=ranking).values_list("chosen_id", "rejected_id", "margin"))


def test_comment_and_all_bad_are_stored_and_checked(make_user, make_project, db_counts):
    ann = make_user("ann")
    project = make_project(k=3, prompts=2, labelers=[ann])
    lease, ranking = _submit(project, ann, comment="  all <b>meh</b>  ", all_bad=True)
    ranking.refresh_from_db()
    assert (ranking.comment, ranking.all_bad) == ("all <b>meh</b>", True)
    assert len(_pairs(ranking)) == 3  # "all bad" keeps the pairs as ranked
    nxt = assignment_next_for_labeler(project=project, labeler=ann)
    before = db_counts()
    for bad in [{"comment": "x" * (MAX_COMMENT + 1)}, {"comment": 12}, {"all_bad": "yes"}]:
        with pytest.raises(RankingInvalid) as err:
            ranking_submit(assignment_id=nxt.pk, labeler=ann, tiers=[[s] for s in nxt.shown_order], **bad)
        assert err.value.location in {"comment", "all_bad"}
    assert db_counts() == before


def test_replace_swaps_entries_and_pairs_keeps_weight_and_slots(make_user, make_project, db_counts):
    ann = make_user("ann")
    project = make_project(k=3, overlap=2, prompts=2, labelers=[ann])
    lease, ranking = _submit(project, ann)
    PairwiseComparison.objects.filter(ranking=ranking).update(weight=0.5)
    slots = _slots(lease.prompt_id)
    a, b, c = lease.shown_order
    fixed = ranking_replace(assignment_id=lease.pk, labeler=ann, tiers=[[c], [a, b]], flags={a: ["unsafe"]},
                            comment="swapped", all_bad=True, time_spent_ms=40)
    assert fixed.pk == ranking.pk and ranking_tiers(ranking=fixed) == [[c], [a, b]]
    assert _pairs(fixed) == {(c, a, 1), (c, b, 1)}  # the tie gives no pair
    assert set(PairwiseComparison.objects.filter(ranking=fixed).values_list("weight", flat=True)) == {0.5}
    stored = Ranking.objects.get(pk=ranking.pk)
    assert (stored.comment, stored.all_bad) == ("swapped", True)
    assert stored.entries.get(sample_id=a).flags == ["unsafe"]
    assert _slots(lease.prompt_id) == slots and Assignment.objects.get(pk=lease.pk).status == Assignment.Status.SUBMITTED
    counts, spent = db_counts(), stored.time_spent_ms
    again = ranking_replace(assignment_id=lease.pk, labeler=ann, tiers=[[c], [b, a]], flags={a: ["unsafe"]},
                            comment="swapped", all_bad=True, time_spent_ms=40)
    assert again.pk == ranking.pk and db_counts() == counts  # idempotent
    assert Ranking.objects.get(pk=ranking.pk).time_spent_ms == spent
    with pytest.raises(RankingInvalid):  # a bad correction writes nothing
        ranking_replace(assignment_id=lease.pk, labeler=ann, tiers=[[a], [b]])
    assert ranking_tiers(ranking=stored) == [[c], [a, b]] and db_counts() == counts


def test_withdraw_deletes_the_ranking_frees_the_slot_and_is_idempotent(make_user, make_project):
    ann, bob = make_user("ann"), make_user("bob")
    project = make_project(k=3, overlap=1, prompts=1, labelers=[ann, bob])
    lease, ranking = _submit(project, ann)
    assert _slots(lease.prompt_id) == 1 and assignment_next_for_labeler(project=project, labeler=bob) is None
    withdrawn = ranking_withdraw(assignment_id=lease.pk, labeler=ann)
    assert withdrawn.status == Assignment.Status.SKIPPED and withdrawn.skip_reason == WITHDRAWN_REASON
    assert not Ranking.objects.filter(pk=ranking.pk).exists()
    assert not PairwiseComparison.objects.filter(prompt_id=lease.prompt_id).exists()
    assert _slots(lease.prompt_id) == 0
    assert ranking_withdraw(assignment_id=lease.pk, labeler=ann).pk == lease.pk  # again: no error, no change
    assert assignment_next_for_labeler(project=project, labeler=ann) is None  # not offered to ann again
    assert assignment_next_for_labeler(project=project, labeler=bob).prompt_id == lease.prompt_id  # but to bob
    with pytest.raises(RankingInvalid):
        ranking_replace(assignment_id=lease.pk, labeler=ann, tiers=[[s] for s in lease.shown_order])


def test_only_the_own_last_ranking_of_an_open_round_can_change(make_user, make_project, db_counts):
    ann, bob = make_user("ann"), make_user("bob")
    project = make_project(k=2, overlap=2, prompts=2, labelers=[ann, bob])
    first, _ = _submit(project, ann)
    second, _ = _submit(project, ann)
    before = db_counts()
    with pytest.raises(RankingInvalid, match="only your last"):
        ranking_withdraw(assignment_id=first.pk, labeler=ann)
    with pytest.raises(RankingInvalid, match="not leased to you"):
        ranking_withdraw(assignment_id=second.pk, labeler=bob)
    Round.objects.filter(project=project).update(status=Round.Status.CLOSED)
    with pytest.raises(RankingInvalid, match="closed"):
        ranking_replace(assignment_id=second.pk, labeler=ann, tiers=[list(reversed(second.shown_order))])
    with pytest.raises(RankingInvalid, match="closed"):
        ranking_withdraw(assignment_id=second.pk, labeler=ann)
    assert db_counts() == before


def test_a_ranking_used_by_a_training_run_cannot_change(make_user, make_project):
    from training.models import DatasetSnapshot

    ann = make_user("ann")
    project = make_project(k=2, prompts=1, labelers=[ann])
    lease, ranking = _submit(project, ann)
    snapshot = DatasetSnapshot.objects.create(project=project, content_hash="0" * 64)
    snapshot.rankings.add(ranking)
    with pytest.raises(RankingInvalid, match="training run"):
        ranking_withdraw(assignment_id=lease.pk, labeler=ann)
    assert Ranking.objects.filter(pk=ranking.pk).exists()
