"""Admin pages load for every annotation model (on the seeded demo), derived records are read-only."""
import pytest
from django.apps import apps
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.urls import reverse

from lab.demo import demo_seed
from annotation.models import Assignment, Membership, PairwiseComparison, Project, Prompt, Ranking
from annotation.services import assignment_next_for_labeler, ranking_submit

MODELS = ["project", "membership", "round", "prompt", "sample", "assignment", "ranking", "rankingentry",
          "pairwisecomparison"]


@pytest.fixture
def demo(db):
    summary = demo_seed(build_base_models=False)
    project = Project.objects.get(slug="demo")
    labeler = Membership.objects.get(project=project, user__username="labeler1").user
    assignment = assignment_next_for_labeler(project=project, labeler=labeler)
    ranking_submit(assignment_id=assignment.pk, labeler=labeler, tiers=[[i] for i in assignment.shown_order])
    return summary


def test_seed_demo_is_idempotent(demo, capsys):
    assert demo["prompts"] == 21 and demo["samples"] == 84
    project = Project.objects.get(slug="demo")
    assert (project.k, project.overlap) == (4, 2) and "**" in project.guidelines
    call_command("seed_demo")
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "already there" in out and "labeler1 / demo-labeler-pw" in out
    # the demo comes with its base models, built once: "Launch" works on a fresh demo
    assert out.count("Base models: tiny-reward-model") == 2 and out.count("(built).") == 1
    assert sorted(project.artifacts.filter(kind="base").values_list("name", flat=True)) == [
        "tiny-causal-lm", "tiny-reward-model"]
    assert Prompt.objects.filter(project=project).count() == 21
    assert Ranking.objects.count() == 1 and Membership.objects.filter(project=project).count() == 3
    assert authenticate(username="admin", password="demo-admin-pw").is_superuser
    assert authenticate(username="researcher", password="demo-researcher-pw") is not None


@pytest.mark.parametrize("model", MODELS)
def test_admin_changelist_and_change_pages_load(demo, client, model):
    client.login(username="admin", password="demo-admin-pw")
    url = reverse(f"admin:annotation_{model}_changelist")
    assert client.get(url).status_code == 200
    assert client.get(url, {"q": "demo"}).status_code == 200
    obj = apps.get_model("annotation", model).objects.first()
    assert client.get(reverse(f"admin:annotation_{model}_change", args=[obj.pk])).status_code == 200


def test_pairs_and_rankings_are_read_only_in_admin(demo, client):
    client.login(username="admin", password="demo-admin-pw")
    pair = PairwiseComparison.objects.first()
    assert client.get(reverse("admin:annotation_pairwisecomparison_add")).status_code == 403
    page = client.get(reverse("admin:annotation_pairwisecomparison_change", args=[pair.pk])).content.decode()
    assert 'name="margin"' not in page  # shown, not editable
    response = client.post(reverse("admin:annotation_pairwisecomparison_change", args=[pair.pk]), {"margin": 9})
    assert response.status_code == 403 and PairwiseComparison.objects.get(pk=pair.pk).margin == pair.margin
    assert client.post(reverse("admin:annotation_ranking_delete", args=[Ranking.objects.get().pk]),
                       {"post": "yes"}).status_code == 403


def test_admin_requires_staff(demo, client):
    client.login(username="labeler1", password="demo-labeler-pw")
    response = client.get(reverse("admin:annotation_ranking_changelist"))
    assert response.status_code == 302 and Assignment.objects.exists()
