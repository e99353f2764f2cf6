"""AI labelers and active selection from the quality page and API: researchers only, bad input writes nothing."""
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import PairwiseComparison, Prompt, Ranking
from annotation.quality.models import AILabeler, PromptPriority, SelectionRecord
from annotation.quality.strategy_evidence import STRATEGY_EVIDENCE

UTILITY = "default"  # a registered utility hook (annotation.hooks)


@pytest.fixture
def qa(make_user, make_project):
    alice, res = make_user("alice"), make_user("res")
    project = make_project(slug="qa", k=3, prompts=3, labelers=[alice], researchers=[res])
    researcher, labeler, api = Client(), Client(), APIClient()
    researcher.force_login(res)
    labeler.force_login(alice)
    api.force_authenticate(res)
    return {"project": project, "researcher": researcher, "labeler": labeler, "api": api, "alice": alice}


def test_page_adds_and_runs_an_ai_labeler(qa):
    url = reverse("annotation:quality-ai-labeler-add", args=["qa"])
    bad = qa["researcher"].post(url, {"name": "Bad Name!", "kind": "utility", "spec": UTILITY})
    assert bad.status_code == 400 and "AI labeler not saved" in bad.content.decode()
    bad_spec = qa["researcher"].post(url, {"name": "rules", "kind": "utility", "spec": "nope"})
    assert bad_spec.status_code == 400 and "choose one of: default, demo" in bad_spec.content.decode()
    assert not AILabeler.objects.exists()
    assert not get_user_model().objects.filter(username__startswith="ai-rules").exists()
    response = qa["researcher"].post(url, {"name": "rules", "kind": "utility", "spec": UTILITY})
    assert response.status_code == 302
    labeler = AILabeler.objects.get()
    assert labeler.user.username == "ai-rules@qa" and labeler.spec == UTILITY
    page = qa["researcher"].get(reverse("annotation:quality", args=["qa"])).content.decode()
    assert "ai-rules" in page and 'id="ai-labelers"' in page
    run = reverse("annotation:quality-ai-labeler-run", args=["qa"])
    assert qa["researcher"].post(run, {"labeler_id": "x"}).status_code == 400
    assert qa["researcher"].post(run, {"labeler_id": labeler.pk + 99}).status_code == 400
    assert not Ranking.objects.exists()
    response = qa["researcher"].post(run, {"labeler_id": labeler.pk}, follow=True)
    assert "ranked 3 prompts" in response.content.decode()
    assert Ranking.objects.filter(labeler=labeler.user, source="ai").count() == 3


def test_page_records_a_selection(qa):
    url = reverse("annotation:quality-selection", args=["qa"])
    for bad in ({"round": "1", "strategy": "magic"}, {"round": "7", "strategy": "random"},
                {"round": "1", "strategy": "uncertainty"}, {"round": "1", "strategy": "uncertainty", "artifact_id": "5"}):
        response = qa["researcher"].post(url, bad)
        assert response.status_code == 400 and "Selection not recorded" in response.content.decode()
    assert not SelectionRecord.objects.exists() and not PromptPriority.objects.exists()
    response = qa["researcher"].post(url, {"round": "1", "strategy": "random"}, follow=True)
    assert "3 prompts ordered by random" in response.content.decode()
    record = SelectionRecord.objects.get()
    assert record.strategy == "random" and sorted(record.order) == sorted(
        Prompt.objects.filter(project=qa["project"]).values_list("pk", flat=True))
    assert PromptPriority.objects.count() == 3
    assert "Round 1: random" in qa["researcher"].get(reverse("annotation:quality", args=["qa"])).content.decode()


def test_api_ai_labelers_and_selection(qa):
    api, base = qa["api"], "/api/projects/qa/quality/"
    bad = api.post(base + "ai-labelers/", {"name": "rules", "kind": "reward_model", "spec": "12"}, format="json")
    assert bad.status_code == 400 and bad.json()["location"] == "spec"
    assert api.post(base + "ai-labelers/", {"name": "rules", "kind": "oracle", "spec": UTILITY},
                    format="json").status_code == 400
    assert not AILabeler.objects.exists()
    created = api.post(base + "ai-labelers/", {"name": "rules", "kind": "utility", "spec": UTILITY}, format="json")
    assert created.status_code == 200 and created.json()["username"] == "ai-rules@qa"
    assert [row["username"] for row in api.get(base + "ai-labelers/").json()["ai_labelers"]] == ["ai-rules@qa"]
    assert api.post(base + "ai-labelers/run/", {"labeler_id": 999999}, format="json").status_code == 400
    ran = api.post(base + "ai-labelers/run/", {"labeler_id": created.json()["id"], "max_prompts": 2}, format="json")
    assert ran.status_code == 200 and ran.json()["rankings"] == 2
    assert ran.json()["pairs"] == PairwiseComparison.objects.filter(ranking__source="ai").count() > 0
    assert Ranking.objects.filter(source="ai").count() == 2
    bad = api.post(base + "selections/", {"round": 1, "strategy": "uncertainty"}, format="json")
    assert bad.status_code == 400 and bad.json()["location"] == "artifact"
    assert api.post(base + "selections/", {"round": 3, "strategy": "random"}, format="json").status_code == 400
    assert not SelectionRecord.objects.exists()
    chosen = api.post(base + "selections/", {"round": 1, "strategy": "disagreement"}, format="json")
    assert chosen.status_code == 200 and chosen.json()["strategy"] == "disagreement" and len(chosen.json()["order"]) == 3
    assert [row["strategy"] for row in api.get(base + "selections/").json()["selections"]] == ["disagreement"]
    listed = api.get(base + "selections/").json()
    assert listed["default_strategy"] == "random"
    assert set(listed["strategies"]) == {"random", "uncertainty", "disagreement"}
    assert listed["strategies"]["uncertainty"] == STRATEGY_EVIDENCE["uncertainty"]  # the measured saving, beside it
    default = api.post(base + "selections/", {"round": 1}, format="json")
    assert default.status_code == 200 and default.json()["strategy"] == "random"  # random unless a strategy is chosen


def test_labelers_get_403_and_strangers_404(qa, make_user):
    stranger = make_user("stranger")
    posts = [(reverse("annotation:quality-ai-labeler-add", args=["qa"]), {"name": "x", "kind": "utility", "spec": UTILITY}),
             (reverse("annotation:quality-ai-labeler-run", args=["qa"]), {"labeler_id": "1"}),
             (reverse("annotation:quality-selection", args=["qa"]), {"round": "1", "strategy": "random"})]
    other = Client()
    other.force_login(stranger)
    for url, data in posts:
        assert qa["labeler"].post(url, data).status_code == 403
        assert other.post(url, data).status_code == 404
    api = APIClient()
    api.force_authenticate(qa["alice"])
    for path in ("ai-labelers/", "ai-labelers/run/", "selections/"):
        assert api.post(f"/api/projects/qa/quality/{path}", {}, format="json").status_code == 403
    api.force_authenticate(stranger)
    assert api.post("/api/projects/qa/quality/selections/", {}, format="json").status_code == 404
    assert not AILabeler.objects.exists() and not SelectionRecord.objects.exists()


def test_page_forms_need_csrf(qa):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(qa["project"].memberships.get(role="researcher").user)
    response = strict.post(reverse("annotation:quality-selection", args=["qa"]), {"round": "1", "strategy": "random"})
    assert response.status_code == 403 and not SelectionRecord.objects.exists()
