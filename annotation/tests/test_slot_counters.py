"""The prompt's denormalised slot columns (migration 0005): kept in step with the leases by every service,
never trusted for the overlap limit, and a constant number of queries per fetch and submit."""
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation.models import Assignment, Prompt, Sample
from annotation.selectors import prompt_available_for_labeler, prompt_lease_candidates
from annotation.services import (
    assignment_expire_stale,
    assignment_next_for_labeler,
    assignment_skip,
    prompt_slots_refresh,
    ranking_submit,
)

pytestmark = pytest.mark.django_db


def _columns(prompt_id: int) -> tuple[int, object]:
    return tuple(Prompt.objects.filter(pk=prompt_id).values_list("slots_taken", "lease_expires_min").get())


def _tiers(lease) -> list[list[int]]:
    return [[sample_id] for sample_id in lease.shown_order]


def test_lease_submit_and_skip_keep_the_columns_in_step(make_user, make_project):
    ann, bob = make_user("ann"), make_user("bob")
    project = make_project(k=3, overlap=2, prompts=1, labelers=[ann, bob])
    first = assignment_next_for_labeler(project=project, labeler=ann)
    assert _columns(first.prompt_id) == (1, first.expires_at)
    second = assignment_next_for_labeler(project=project, labeler=bob)
    assert second.prompt_id == first.prompt_id
    assert _columns(first.prompt_id) == (2, min(first.expires_at, second.expires_at))
    ranking_submit(assignment_id=first.pk, labeler=ann, tiers=_tiers(first))
    assert _columns(first.prompt_id) == (2, second.expires_at)  # a submitted lease keeps its slot
    assignment_skip(assignment_id=second.pk, labeler=bob, reason="cannot judge")
    assert _columns(first.prompt_id) == (1, None)  # a skipped one gives it back


def test_expired_lease_gives_its_slot_back_before_and_after_the_sweep(make_user, make_project):
    ann, bob, cid = make_user("ann"), make_user("bob"), make_user("cid")
    project = make_project(k=2, overlap=1, prompts=1, labelers=[ann, bob, cid])
    lease = assignment_next_for_labeler(project=project, labeler=ann)
    assert assignment_next_for_labeler(project=project, labeler=bob) is None  # full: overlap 1
    later = lease.expires_at + timedelta(seconds=1)
    assert _columns(lease.prompt_id)[0] == 1  # still counted, but its expiry has passed:
    retaken = assignment_next_for_labeler(project=project, labeler=bob, now=later)
    assert retaken is not None and retaken.prompt_id == lease.prompt_id
    assert assignment_next_for_labeler(project=project, labeler=cid, now=later) is None  # never over overlap
    assert assignment_expire_stale(now=later) == 1
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.EXPIRED
    assert _columns(lease.prompt_id) == (1, retaken.expires_at)  # the sweep recounted


def test_columns_are_a_hint_the_lease_recounts(make_user, make_project):
    """Rows written around the services (admin, a data fix) make the columns wrong; overlap still holds."""
    ann, bob = make_user("ann"), make_user("bob")
    project = make_project(k=2, overlap=1, prompts=1, labelers=[ann, bob])
    prompt = project.prompts.get()
    Assignment.objects.create(prompt=prompt, labeler=ann, status=Assignment.Status.SUBMITTED, shown_order=[],
                              expires_at=timezone.now())
    assert _columns(prompt.pk) == (0, None)  # stale: the write bypassed the services
    assert prompt_lease_candidates(project=project, labeler=bob).count() == 1
    assert assignment_next_for_labeler(project=project, labeler=bob) is None  # the exact recount says full
    assert prompt_slots_refresh(prompt_ids=[prompt.pk]) == 1
    assert _columns(prompt.pk) == (1, None)
    assert prompt_lease_candidates(project=project, labeler=bob).count() == 0


def test_prompts_with_fewer_than_two_samples_are_never_leased(make_user, make_project):
    ann = make_user("ann")
    project = make_project(k=2, overlap=1, prompts=2, labelers=[ann])
    lonely = project.prompts.order_by("id").first()
    Sample.objects.filter(prompt=lonely, position=1).delete()
    assert list(prompt_available_for_labeler(project=project, labeler=ann)) == [project.prompts.order_by("id").last()]
    lease = assignment_next_for_labeler(project=project, labeler=ann)
    assert lease.prompt_id != lonely.pk


@pytest.mark.parametrize("prompts", [2, 40])
def test_fetch_and_submit_take_the_same_queries_whatever_the_number_of_prompts(make_user, make_project, prompts):
    ann = make_user("ann")
    project = make_project(k=4, overlap=3, prompts=prompts, labelers=[ann])
    with CaptureQueriesContext(connection) as fetch:
        lease = assignment_next_for_labeler(project=project, labeler=ann)
    with CaptureQueriesContext(connection) as submit:
        ranking_submit(assignment_id=lease.pk, labeler=ann, tiers=_tiers(lease))
    assert len(fetch) <= 12, [q["sql"][:120] for q in fetch.captured_queries]
    assert len(submit) <= 11, [q["sql"][:120] for q in submit.captured_queries]
