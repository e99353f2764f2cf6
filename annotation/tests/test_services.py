"""Annotation services: leasing, submitting (idempotent, all-or-nothing), skipping, expiry, the writer."""
from datetime import timedelta
from math import comb

import pytest
from django.utils import timezone

from annotation.errors import InvalidInput, RankingInvalid
from annotation.models import Assignment, PairwiseComparison, Prompt, Ranking, RankingEntry, Round, Sample
from annotation.services import (
    assignment_expire_stale,
    assignment_next_for_labeler,
    assignment_skip,
    ranking_record,
    ranking_submit,
    ranking_tiers,
)

pytestmark = pytest.mark.django_db


def _strict(assignment) -> list[list[int]]:
    """A strict ranking: the order shown."""
    return [[sample_id] for sample_id in assignment.shown_order]


def test_lease_is_stable_and_shown_order_is_a_per_labeler_shuffle(make_user, make_project):
    labelers = [make_user(f"l{i}") for i in range(8)]
    project = make_project(k=4, overlap=8, prompts=1, labelers=labelers)
    first = assignment_next_for_labeler(project=project, labeler=labelers[0])
    assert assignment_next_for_labeler(project=project, labeler=labelers[0]).pk == first.pk
    sample_ids = sorted(first.prompt.samples.values_list("pk", flat=True))
    orders = [tuple(assignment_next_for_labeler(project=project, labeler=u).shown_order) for u in labelers]
    assert all(sorted(order) == sample_ids for order in orders)
    assert len(set(orders)) > 1, "every labeler saw the same order"
    lease = Assignment.objects.get(pk=first.pk)
    assert timedelta(minutes=project.lease_minutes - 1) < lease.expires_at - timezone.now() <= timedelta(
        minutes=project.lease_minutes
    )


def test_overlap_limits_labelers_per_prompt_and_none_when_nothing_left(make_user, make_project):
    a, b, c = make_user("a"), make_user("b"), make_user("c")
    project = make_project(k=3, overlap=2, prompts=1, labelers=[a, b, c])
    for labeler in (a, b):
        lease = assignment_next_for_labeler(project=project, labeler=labeler)
        ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease))
    assert assignment_next_for_labeler(project=project, labeler=c) is None
    assert assignment_next_for_labeler(project=project, labeler=a) is None  # never the same prompt twice


def test_closed_rounds_and_imported_rankings_do_not_take_slots(make_user, make_project):
    labeler = make_user("a")
    project = make_project(k=2, overlap=1, prompts=2, labelers=[labeler])
    prompts = list(Prompt.objects.filter(project=project))
    ranking_record(prompt=prompts[0], labeler=None, tiers=[[s.pk] for s in prompts[0].samples.all()], source="imported")
    closed = Round.objects.create(project=project, number=2, status=Round.Status.CLOSED)
    Prompt.objects.filter(pk=prompts[1].pk).update(round=closed)
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    assert lease.prompt_id == prompts[0].pk
    ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease))
    assert assignment_next_for_labeler(project=project, labeler=labeler) is None


def test_submit_writes_ranking_entries_and_pairs(leased):
    project, labeler, lease = leased
    a, b, c, d = lease.shown_order
    ranking = ranking_submit(
        assignment_id=lease.pk, labeler=labeler, tiers=[[c], [a, d], [b]], flags={b: ["unsafe", "off_topic"]},
        time_spent_ms=4200,
    )
    assert ranking.source == "human" and ranking.time_spent_ms == 4200 and ranking.assignment_id == lease.pk
    entries = {e.sample_id: e for e in RankingEntry.objects.filter(ranking=ranking)}
    assert {s: e.tier for s, e in entries.items()} == {c: 0, a: 1, d: 1, b: 2}
    assert {s: e.shown_position for s, e in entries.items()} == {a: 0, b: 1, c: 2, d: 3}
    assert entries[b].flags == ["off_topic", "unsafe"] and entries[a].flags == []
    pairs = {(p.chosen_id, p.rejected_id): p.margin for p in PairwiseComparison.objects.filter(ranking=ranking)}
    assert pairs == {(c, a): 1, (c, d): 1, (c, b): 2, (a, b): 1, (d, b): 1}  # C(4,2) - 1 tie
    assert all(p.prompt_id == lease.prompt_id for p in PairwiseComparison.objects.filter(ranking=ranking))
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.SUBMITTED
    assert ranking_tiers(ranking=ranking) == [[c], [a, d], [b]]


def test_repeated_submit_is_idempotent_and_a_different_one_is_rejected(leased, db_counts):
    _, labeler, lease = leased
    a, b, c, d = lease.shown_order
    first = ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[a, b], [c], [d]])
    before = db_counts()
    again = ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[b, a], [c], [d]])
    assert again.pk == first.pk and db_counts() == before
    with pytest.raises(RankingInvalid, match="already submitted"):
        ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[a], [b], [c], [d]])
    assert db_counts() == before


@pytest.mark.parametrize(
    "make_tiers, flags, location",
    [
        (lambda s, other: [[s[0]], [s[1]], [s[2]]], None, "tiers"),  # a response missing
        (lambda s, other: [[s[0]], [s[1]], [s[2]], [s[3]], [s[0]]], None, "tiers[4][0]"),  # duplicate
        (lambda s, other: [[s[0]], [s[1]], [s[2]], [other]], None, "tiers[3][0]"),  # another prompt's response
        (lambda s, other: [[s[0]], [], [s[1], s[2], s[3]]], None, "tiers[1]"),  # empty tier
        (lambda s, other: [[s[0]], [s[1]], [s[2]], [s[3]]], {"s0": ["rude"]}, "flags[{s0}]"),  # unknown flag
        (lambda s, other: [[s[0]], [s[1]], [s[2]], [s[3]]], {"other": ["unsafe"]}, "flags[{other}]"),
    ],
)
def test_invalid_ranking_writes_nothing(leased, db_counts, make_tiers, flags, location):
    _, labeler, lease = leased
    shown = lease.shown_order
    other = Sample.objects.exclude(prompt_id=lease.prompt_id).first().pk
    names = {"s0": shown[0], "other": other}
    flags = {names[key]: value for key, value in flags.items()} if flags else None
    before = db_counts()
    with pytest.raises(RankingInvalid) as info:
        ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=make_tiers(shown, other), flags=flags)
    assert info.value.location == location.format(**names)
    assert db_counts() == before
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.ACTIVE


def test_someone_elses_or_missing_lease_is_rejected(leased, make_user, db_counts):
    _, labeler, lease = leased
    mallory = make_user("mallory")
    before = db_counts()
    for assignment_id, who in ((lease.pk, mallory), (lease.pk + 1000, labeler)):
        with pytest.raises(RankingInvalid, match="not leased to you"):
            ranking_submit(assignment_id=assignment_id, labeler=who, tiers=_strict(lease))
    with pytest.raises(RankingInvalid, match="time spent"):
        ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease), time_spent_ms=-1)
    with pytest.raises(RankingInvalid, match="unknown source"):
        ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease), source="robot")
    assert db_counts() == before


def test_expired_lease_returns_the_slot_and_can_be_submitted_only_while_free(make_user, make_project):
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project(k=2, overlap=1, prompts=1, labelers=[alice, bob])
    lease = assignment_next_for_labeler(project=project, labeler=alice)
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 1)
    assert assignment_next_for_labeler(project=project, labeler=bob) is None
    # Past expiry but not yet marked: alice may still submit, the slot being free.
    ranking = ranking_submit(assignment_id=lease.pk, labeler=alice, tiers=_strict(lease), now=later)
    assert ranking.labeler == alice
    # A second prompt: alice's lease expires and bob takes the slot.
    project2 = make_project(slug="second", k=2, overlap=1, prompts=1, labelers=[alice, bob])
    lease2 = assignment_next_for_labeler(project=project2, labeler=alice)
    assert assignment_expire_stale(now=later) == 1
    assert Assignment.objects.get(pk=lease2.pk).status == Assignment.Status.EXPIRED
    taken = assignment_next_for_labeler(project=project2, labeler=bob, now=later)
    assert taken.prompt_id == lease2.prompt_id
    with pytest.raises(RankingInvalid, match="given to another labeler"):
        ranking_submit(assignment_id=lease2.pk, labeler=alice, tiers=_strict(lease2), now=later)
    assert assignment_expire_stale(now=later) == 0
    assert assignment_expire_stale(now=later + timedelta(minutes=project.lease_minutes)) == 1  # bob's, in turn


def test_expired_row_is_reused_when_the_labeler_gets_the_prompt_again(leased):
    project, labeler, lease = leased
    assignment_expire_stale(now=timezone.now() + timedelta(days=1))
    again = assignment_next_for_labeler(project=project, labeler=labeler)
    assert again.pk == lease.pk and again.status == Assignment.Status.ACTIVE
    assert again.shown_order == lease.shown_order and again.expires_at > timezone.now()


def test_skip_needs_a_reason_frees_the_slot_and_is_idempotent(make_user, make_project):
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project(k=2, overlap=1, prompts=1, labelers=[alice, bob])
    lease = assignment_next_for_labeler(project=project, labeler=alice)
    for reason in ("", "   ", "x" * 501):
        with pytest.raises(InvalidInput) as info:
            assignment_skip(assignment_id=lease.pk, labeler=alice, reason=reason)
        assert info.value.location == "reason"
    with pytest.raises(InvalidInput, match="not leased to you"):
        assignment_skip(assignment_id=lease.pk, labeler=bob, reason="not mine")
    skipped = assignment_skip(assignment_id=lease.pk, labeler=alice, reason=" I can't judge code. ")
    assert skipped.status == Assignment.Status.SKIPPED and skipped.skip_reason == "I can't judge code."
    assert assignment_skip(assignment_id=lease.pk, labeler=alice, reason="again").skip_reason == "I can't judge code."
    assert assignment_next_for_labeler(project=project, labeler=alice) is None
    assert assignment_next_for_labeler(project=project, labeler=bob).prompt_id == lease.prompt_id
    with pytest.raises(RankingInvalid, match="skipped"):
        ranking_submit(assignment_id=lease.pk, labeler=alice, tiers=_strict(lease))


def test_submitted_lease_cannot_be_skipped(leased):
    _, labeler, lease = leased
    ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease))
    with pytest.raises(InvalidInput, match="already submitted"):
        assignment_skip(assignment_id=lease.pk, labeler=labeler, reason="changed my mind")


def test_ranking_record_for_imports_is_idempotent_and_checks_source(make_project, db_counts):
    project = make_project(k=2, prompts=1)
    prompt = Prompt.objects.get(project=project)
    best, worst = prompt.samples.values_list("pk", flat=True)
    first = ranking_record(prompt=prompt, labeler=None, tiers=[[best], [worst]], source="imported")
    assert first.labeler is None and first.pairs.get().chosen_id == best
    before = db_counts()
    assert ranking_record(prompt=prompt, labeler=None, tiers=[[best], [worst]], source="imported").pk == first.pk
    with pytest.raises(RankingInvalid, match="already"):
        ranking_record(prompt=prompt, labeler=None, tiers=[[worst], [best]], source="imported")
    with pytest.raises(RankingInvalid, match="without a labeler"):
        ranking_record(prompt=prompt, labeler=None, tiers=[[best], [worst]], source="human")
    assert db_counts() == before


def test_pair_count_is_k_choose_2_minus_ties(make_user, make_project):
    labeler = make_user("a")
    project = make_project(k=6, prompts=1, labelers=[labeler])
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    s = lease.shown_order
    ranking = ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[s[0], s[1], s[2]], [s[3]], [s[4], s[5]]])
    assert ranking.pairs.count() == comb(6, 2) - comb(3, 2) - comb(2, 2)
    assert sorted(ranking.pairs.values_list("margin", flat=True)) == [1] * 3 + [1] * 2 + [2] * 6
    assert Ranking.objects.count() == 1


# --- Concurrency and database triggers (PostgreSQL; committed transactions, so transaction=True) ---------


def _in_threads(n: int, work) -> list:
    """Run ``work(i)`` in n threads released together; returns results or raised exceptions, by i."""
    import threading

    from django.db import connection

    barrier, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts there are none
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_labelers_never_share_a_slot_and_overlap_holds(on_postgresql, make_user, make_project):
    labelers = [make_user(f"c{i}") for i in range(6)]
    project = make_project(slug="race", k=3, overlap=2, prompts=5, labelers=labelers)

    def label_until_done(i: int) -> int:
        labeler, done = labelers[i % len(labelers)], 0  # two threads per labeler: same lease, same ranking
        while (lease := assignment_next_for_labeler(project=project, labeler=labeler)) is not None:
            ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease))
            done += 1
        return done

    results = _in_threads(12, label_until_done)
    assert not [r for r in results if isinstance(r, Exception)], results
    submitted = Assignment.objects.filter(prompt__project=project, status=Assignment.Status.SUBMITTED)
    assert submitted.count() == 5 * 2  # every slot filled exactly once
    for prompt in Prompt.objects.filter(project=project):
        rankings = Ranking.objects.filter(prompt=prompt)
        assert rankings.count() == 2 and len({r.labeler_id for r in rankings}) == 2
    assert PairwiseComparison.objects.filter(prompt__project=project).count() == 10 * comb(3, 2)
    assert not Assignment.objects.filter(prompt__project=project, status=Assignment.Status.ACTIVE).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_double_submit_writes_once(on_postgresql, make_user, make_project):
    labeler = make_user("clicker")
    project = make_project(slug="double", k=4, prompts=1, labelers=[labeler])
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    results = _in_threads(8, lambda i: ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=_strict(lease)).pk)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    assert Ranking.objects.count() == 1 and PairwiseComparison.objects.count() == comb(4, 2)
    assert RankingEntry.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_triggers_reject_a_ranking_that_does_not_cover_its_prompt_at_commit(on_postgresql, make_user, make_project):
    from django.db import IntegrityError, transaction

    labeler = make_user("raw")
    make_project(slug="raw", k=3, prompts=2, labelers=[labeler])
    prompt, other = Prompt.objects.filter(project__slug="raw")
    samples, foreign = list(prompt.samples.all()), other.samples.first()
    with pytest.raises(IntegrityError, match="must rank exactly the 3 samples"):
        with transaction.atomic():  # two of three samples ranked: fails when the transaction commits
            ranking = Ranking.objects.create(prompt=prompt, labeler=labeler, source="human")
            for position, sample in enumerate(samples[:2]):
                RankingEntry.objects.create(ranking=ranking, sample=sample, tier=position, shown_position=position)
    with pytest.raises(IntegrityError, match="1 of them from another prompt"):
        with transaction.atomic():
            ranking = Ranking.objects.create(prompt=prompt, labeler=labeler, source="human")
            for position, sample in enumerate(samples[:2] + [foreign]):
                RankingEntry.objects.create(ranking=ranking, sample=sample, tier=position, shown_position=position)
    assert not Ranking.objects.exists()
    ranking = ranking_record(prompt=prompt, labeler=labeler, tiers=[[s.pk] for s in samples], source="human")
    with pytest.raises(IntegrityError, match="must both be samples of prompt"):
        with transaction.atomic():
            PairwiseComparison.objects.create(
                ranking=ranking, prompt=prompt, chosen=samples[0], rejected=foreign, margin=1
            )
    with pytest.raises(IntegrityError, match="is not the prompt of ranking"):
        with transaction.atomic():
            a, b = other.samples.all()[:2]
            PairwiseComparison.objects.create(ranking=ranking, prompt=other, chosen=a, rejected=b, margin=1)
    assert PairwiseComparison.objects.count() == comb(3, 2)


def test_only_members_get_leases(make_user, make_project):
    from annotation.errors import NotAllowed

    project = make_project(k=2, prompts=1)
    with pytest.raises(NotAllowed, match="not a member"):
        assignment_next_for_labeler(project=project, labeler=make_user("stranger"))
    assert not Assignment.objects.exists()
    root = make_user("root", is_superuser=True)
    assert assignment_next_for_labeler(project=project, labeler=root) is not None
