"""A skip after the lease's slot was taken by another labeler is a 409 and writes nothing (issue #10, item 8)."""
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotation.errors import LeaseLost
from annotation.models import Assignment, Membership
from annotation.services import assignment_next_for_labeler, assignment_skip, prompt_slots_refresh

pytestmark = pytest.mark.django_db


@pytest.fixture
def lost(leased, make_user):
    """alice's lease expired and bob took the prompt's only slot (overlap 1)."""
    project, alice, lease = leased
    bob = make_user("bob")
    Membership.objects.create(project=project, user=bob, role=Membership.Role.LABELER)
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    prompt_slots_refresh(prompt_ids=[lease.prompt_id])
    taken = assignment_next_for_labeler(project=project, labeler=bob)
    assert taken.prompt_id == lease.prompt_id
    client = Client()
    client.force_login(alice)
    return lease, client


def _row(lease):
    return Assignment.objects.filter(pk=lease.pk).values("status", "skip_reason", "finished_at").get()


def test_the_service_refuses_with_lease_lost(lost):
    lease, _ = lost
    before = _row(lease)
    with pytest.raises(LeaseLost, match="given to another labeler"):
        assignment_skip(assignment_id=lease.pk, labeler=lease.labeler, reason="cannot judge")
    assert _row(lease) == before


def test_api_skip_of_a_lost_lease_is_409_and_writes_nothing(lost):
    lease, client = lost
    before = _row(lease)
    response = client.post(f"/api/assignments/{lease.pk}/skip/", {"reason": "cannot judge"},
                           content_type="application/json")
    assert response.status_code == 409
    assert response.json() == {"error": "your lease expired and the task was given to another labeler; nothing to "
                                        "skip, please take the next one", "location": "assignment"}
    assert _row(lease) == before


@pytest.mark.parametrize("htmx", [False, True])
def test_page_skip_of_a_lost_lease_is_409_and_writes_nothing(lost, htmx):
    lease, client = lost
    before = _row(lease)
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.post(f"/assignments/{lease.pk}/skip/", {"reason": "cannot_judge"}, headers=headers)
    assert response.status_code == 409 and "given to another labeler" in response.content.decode()
    assert _row(lease) == before


def test_an_expired_lease_whose_slot_is_free_may_still_be_skipped(leased):
    project, alice, lease = leased
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    skipped = assignment_skip(assignment_id=lease.pk, labeler=alice, reason="cannot judge")
    assert skipped.status == Assignment.Status.SKIPPED
