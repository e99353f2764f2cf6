"""What the apps above plug into annotation (annotation/extensions.py): lab's model services and training's
ranking lock are registered at start-up, and without lab the quality page's model actions answer 400."""
import pytest

from annotation import extensions

pytestmark = pytest.mark.django_db


def test_lab_and_training_register_at_startup():
    from lab.active.services import round_select
    from lab.ai_labelers.services import ai_labeler_create, ai_labeler_run
    from training.selectors import ranking_lock_by_snapshot

    services = extensions.model_services()
    assert (services.round_select, services.ai_labeler_create, services.ai_labeler_run) == (
        round_select, ai_labeler_create, ai_labeler_run)
    assert ranking_lock_by_snapshot in extensions._ranking_locks


def test_without_lab_the_model_actions_are_refused_with_400(monkeypatch, make_user, make_project, client):
    monkeypatch.setattr(extensions, "_registered", [])
    researcher = make_user("rita")
    project = make_project(slug="nolab", researchers=[researcher])
    client.force_login(researcher)
    response = client.post(f"/api/projects/{project.slug}/quality/selections/", {"round": 1, "strategy": "random"},
                           content_type="application/json")
    assert response.status_code == 400 and "lab app" in response.json()["error"]
    assert not project.rounds.get().selections.exists()


def test_a_ranking_lock_reason_is_the_first_non_empty_one(monkeypatch):
    monkeypatch.setattr(extensions, "_ranking_locks", [])
    extensions.ranking_lock_register(lambda ranking: "")
    assert extensions.ranking_lock_reason(object()) == ""
    extensions.ranking_lock_register(lambda ranking: f"held by {ranking}")
    assert extensions.ranking_lock_reason("x") == "held by x"
