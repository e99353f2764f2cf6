"""Selectors: who sees which project, lease and ranking; progress figures."""
from math import comb

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from annotation.selectors import (
    assignment_get_for_labeler,
    labeler_progress,
    project_get_for_user,
    project_list_for_user,
    project_progress,
    ranking_list_for_user,
    user_can_manage,
    user_role,
)
from annotation.services import assignment_next_for_labeler, assignment_skip, ranking_submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(make_user, make_project):
    """Two projects; alice labels both, bob labels "demo", rita researches "demo", root is a superuser."""
    users = {name: make_user(name) for name in ("alice", "bob", "rita", "outsider")}
    users["root"] = make_user("root", is_superuser=True, is_staff=True)
    demo = make_project(slug="demo", k=3, overlap=2, prompts=3, labelers=[users["alice"], users["bob"]],
                        researchers=[users["rita"]])
    other = make_project(slug="other", k=2, prompts=1, labelers=[users["alice"]])
    return users, demo, other


def _rank(project, labeler):
    lease = assignment_next_for_labeler(project=project, labeler=labeler)
    return ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[s] for s in lease.shown_order])


def test_projects_are_visible_to_members_and_superusers_only(team):
    users, demo, other = team
    assert list(project_list_for_user(user=users["alice"])) == [demo, other]
    assert list(project_list_for_user(user=users["bob"])) == [demo]
    assert list(project_list_for_user(user=users["outsider"])) == []
    assert list(project_list_for_user(user=AnonymousUser())) == []
    assert set(project_list_for_user(user=users["root"])) == {demo, other}
    assert project_get_for_user(user=users["bob"], slug="demo") == demo
    for user, slug in ((users["bob"], "other"), (users["outsider"], "demo"), (users["root"], "missing")):
        with pytest.raises(Http404):
            project_get_for_user(user=user, slug=slug)


def test_roles_and_who_may_manage(team):
    users, demo, other = team
    expected = {"alice": ("labeler", False), "rita": ("researcher", True), "root": ("admin", True),
                "outsider": (None, False)}
    for name, (role, manages) in expected.items():
        assert user_role(user=users[name], project=demo) == role
        assert user_can_manage(user=users[name], project=demo) is manages
    assert user_role(user=users["rita"], project=other) is None
    assert user_can_manage(user=AnonymousUser(), project=demo) is False


def test_leases_are_private_to_their_labeler(team):
    users, demo, _ = team
    lease = assignment_next_for_labeler(project=demo, labeler=users["alice"])
    assert assignment_get_for_labeler(assignment_id=lease.pk, labeler=users["alice"]) == lease
    for intruder in ("bob", "rita", "root"):
        with pytest.raises(Http404):
            assignment_get_for_labeler(assignment_id=lease.pk, labeler=users[intruder])


def test_labelers_see_only_their_own_rankings(team):
    users, demo, _ = team
    mine, theirs = _rank(demo, users["alice"]), _rank(demo, users["bob"])
    assert list(ranking_list_for_user(user=users["alice"], project=demo)) == [mine]
    assert list(ranking_list_for_user(user=users["bob"], project=demo)) == [theirs]
    assert list(ranking_list_for_user(user=users["rita"], project=demo)) == [mine, theirs]
    assert list(ranking_list_for_user(user=users["root"], project=demo)) == [mine, theirs]
    assert list(ranking_list_for_user(user=users["outsider"], project=demo)) == []


def test_progress_figures(team):
    users, demo, _ = team
    empty = project_progress(project=demo)
    assert empty == {"prompts": 3, "open_prompts": 3, "slots_total": 6, "slots_filled": 0, "slots_leased": 0,
                     "open_slots": 6, "rankings": 0, "rankings_by_source": {}, "pairs": 0, "percent_complete": 0.0}
    _rank(demo, users["alice"])
    skipped = assignment_next_for_labeler(project=demo, labeler=users["alice"])
    assignment_skip(assignment_id=skipped.pk, labeler=users["alice"], reason="unsure")
    assignment_next_for_labeler(project=demo, labeler=users["alice"])  # leased, not yet ranked
    figures = project_progress(project=demo)
    assert (figures["slots_filled"], figures["slots_leased"], figures["open_slots"]) == (1, 1, 4)
    assert figures["pairs"] == comb(3, 2) and figures["percent_complete"] == round(100 / 6, 1)
    assert figures["rankings_by_source"] == {"human": 1}
    assert labeler_progress(project=demo, labeler=users["alice"]) == {"done": 1, "skipped": 1, "remaining": 1}
    assert labeler_progress(project=demo, labeler=users["bob"]) == {"done": 0, "skipped": 0, "remaining": 3}
