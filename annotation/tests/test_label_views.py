"""The labelling page's corrections over HTTP: edit and withdraw the last ranking, comment and all-bad; bad input
is a 400 with the place named and writes nothing, someone else's lease is a 404."""
import json
import re

import pytest
from django.urls import reverse

from annotation.models import Assignment, Ranking, Round
from annotation.tests.test_views import HTMX, client_for, lease, team  # noqa: F401 - team is a fixture

pytestmark = pytest.mark.django_db


def _submit(client, assignment, **extra):
    data = {"tiers": json.dumps([[s] for s in assignment.shown_order]), **extra}
    return client.post(reverse("annotation:submit", args=[assignment.pk]), data, **HTMX)


def test_submit_stores_comment_and_all_bad_and_offers_undo(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    assert "Undo / edit last" not in client.get(reverse("annotation:label", args=["alpha"])).content.decode()
    response = _submit(client, assignment, comment="<script>alert(1)</script>", all_bad="on")
    assert response.status_code == 200 and "Undo / edit last" in response.content.decode()
    ranking = Ranking.objects.get(assignment=assignment)
    assert (ranking.comment, ranking.all_bad) == ("<script>alert(1)</script>", True)
    page = client.get(reverse("annotation:edit-last", args=["alpha"])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in page and "<script>alert(1)" not in page
    assert reverse("annotation:edit", args=[assignment.pk]) in page and "Withdraw this ranking" in page
    first = assignment.shown_order[0]  # ranked first: its select is on 1 without JavaScript too
    assert re.search(rf'name="rank_{first}"[^>]*>\s*<option value="">—</option>\s*<option value="1" selected>', page)


@pytest.mark.parametrize("bad", [{"comment": "x" * 1001}, {"all_bad": "maybe"}, {"tiers": "[[1]]"}])
def test_bad_submit_or_edit_is_400_and_writes_nothing(team, db_counts, bad):
    client = client_for(team["labeler"])
    assignment = lease(client)
    before = db_counts()
    response = _submit(client, assignment, **bad)
    assert response.status_code == 400 and 'class="error"' in response.content.decode()
    assert db_counts() == before
    assert _submit(client, assignment).status_code == 200
    stored = list(Ranking.objects.get(assignment=assignment).pairs.values_list("chosen_id", "rejected_id"))
    data = {"tiers": json.dumps([[s] for s in assignment.shown_order]), **bad}
    edit = client.post(reverse("annotation:edit", args=[assignment.pk]), data, **HTMX)
    assert edit.status_code == 400 and edit["HX-Retarget"] == "#form-error"
    plain = client.post(reverse("annotation:edit", args=[assignment.pk]), data)
    assert plain.status_code == 400 and plain.context["editing"].assignment_id == assignment.pk  # the edit page again
    assert list(Ranking.objects.get(assignment=assignment).pairs.values_list("chosen_id", "rejected_id")) == stored


def test_edit_and_withdraw_over_http(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    _submit(client, assignment)
    reverse_order = json.dumps([[s] for s in reversed(assignment.shown_order)])
    done = client.post(reverse("annotation:edit", args=[assignment.pk]), {"tiers": reverse_order, "comment": "fixed"}, **HTMX)
    assert done.status_code == 200 and "Ranking corrected." in done.content.decode()
    ranking = Ranking.objects.get(assignment=assignment)
    assert ranking.comment == "fixed" and ranking.entries.get(sample_id=assignment.shown_order[-1]).tier == 0
    foreign = client_for(team["other"]).post(reverse("annotation:withdraw", args=[assignment.pk]), **HTMX)
    assert foreign.status_code == 404 and Ranking.objects.filter(pk=ranking.pk).exists()
    gone = client.post(reverse("annotation:withdraw", args=[assignment.pk]), **HTMX)
    assert gone.status_code == 200 and "Ranking withdrawn" in gone.content.decode()
    assert not Ranking.objects.filter(pk=ranking.pk).exists()
    assert Assignment.objects.get(pk=assignment.pk).status == Assignment.Status.SKIPPED
    again = client.post(reverse("annotation:withdraw", args=[assignment.pk]), **HTMX)
    assert again.status_code == 200  # idempotent


def test_nothing_to_edit_after_the_round_closes(team):
    client = client_for(team["labeler"])
    assignment = lease(client)
    _submit(client, assignment)
    Round.objects.filter(project=team["project"]).update(status=Round.Status.CLOSED)
    page = client.get(reverse("annotation:edit-last", args=["alpha"]))
    assert page.status_code == 200 and "no ranking in an open round to change" in page.content.decode()
    edit = client.post(reverse("annotation:edit", args=[assignment.pk]),
                       {"tiers": json.dumps([[s] for s in reversed(assignment.shown_order)])}, **HTMX)
    assert edit.status_code == 400 and "closed" in edit.content.decode()
