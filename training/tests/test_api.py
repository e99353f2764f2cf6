"""Runs API: object-level authorization, validation with located errors, mass assignment, schema."""
import pytest
from django.test import Client

from training import services
from training.models import ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(ranked, make_user):
    project, researcher, labeler = ranked

    def login(user):
        c = Client()
        c.force_login(user)
        return c

    return project, login(researcher), login(labeler), login(make_user("eve"))


def test_create_validates_and_authorizes(api, model_dir, sent):
    project, researcher, labeler, outsider = api
    url = f"/api/projects/{project.slug}/runs/"
    body = {"kind": "reward", "config": {"base_model": str(model_dir), "epochs": 2}}
    assert outsider.post(url, body, content_type="application/json").status_code == 404
    assert labeler.post(url, body, content_type="application/json").status_code == 403
    bad = researcher.post(url, {"config": {"base_model": str(model_dir), "batch_size": 0}},
                          content_type="application/json")
    assert bad.status_code == 400 and bad.json()["location"] == "config.batch_size"
    sneaky = researcher.post(url, {**body, "launched_by": labeler.session.get("_auth_user_id"), "project": 99},
                             content_type="application/json")
    assert sneaky.status_code == 400 and sneaky.json()["location"] in {"launched_by", "project"}
    assert not TrainingRun.objects.exists()
    created = researcher.post(url, body, content_type="application/json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["status"] == "queued" and data["snapshot"]["num_pairs"] == 36 and data["launched_by"] == "rita"
    assert researcher.get(url).json()[0]["id"] == data["id"] and outsider.get(url).status_code == 404
    assert labeler.get(url).status_code == 403  # labelers see no training


def test_get_and_cancel(api, model_dir, sent):
    project, researcher, labeler, outsider = api
    run = services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)})
    assert outsider.get(f"/api/runs/{run.pk}/").status_code == 404
    assert labeler.get(f"/api/runs/{run.pk}/").status_code == 404
    detail = researcher.get(f"/api/runs/{run.pk}/").json()
    assert detail["progress"]["status"] == "queued" and detail["metrics"]["train"] == {"step": []}
    assert labeler.post(f"/api/runs/{run.pk}/cancel/").status_code == 404
    assert outsider.post(f"/api/runs/{run.pk}/cancel/").status_code == 404
    assert researcher.post(f"/api/runs/{run.pk}/cancel/").json()["status"] == "cancelled"


def test_artifacts_list_and_download(api, stored_model, artifact_root):
    project, researcher, labeler, outsider = api
    artifact = services.artifact_register(project=project, kind=ModelArtifact.Kind.BASE, name="m", path=stored_model)
    assert [a["id"] for a in researcher.get(f"/api/projects/{project.slug}/artifacts/").json()] == [artifact.pk]
    assert labeler.get(f"/api/projects/{project.slug}/artifacts/").status_code == 403
    assert outsider.get(f"/api/projects/{project.slug}/artifacts/").status_code == 404
    assert outsider.get(f"/api/artifacts/{artifact.pk}/download/").status_code == 404
    assert labeler.get(f"/api/artifacts/{artifact.pk}/download/").status_code == 404
    response = researcher.get(f"/api/artifacts/{artifact.pk}/download/")
    assert response.status_code == 200 and b"".join(response.streaming_content)[:2] == b"PK"


def test_schema_documents_the_run_endpoints(api):
    schema = api[1].get("/api/schema/").content.decode()
    for path in ("/api/projects/{slug}/runs/", "/api/runs/{run_id}/cancel/", "/api/artifacts/{artifact_id}/download/"):
        assert path in schema
