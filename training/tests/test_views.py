"""Run pages: permissions, launch form, htmx status card that stops polling with 286, cancel, download."""
import io
import zipfile

import pytest
from django.urls import reverse

from training import services
from training.models import DatasetSnapshot, ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db
Status = TrainingRun.Status


@pytest.fixture
def clients(ranked, make_user, client, django_user_model):
    from django.test import Client

    project, researcher, labeler = ranked
    outsider = make_user("eve")

    def login(user):
        c = Client()
        c.force_login(user)
        return c

    return project, login(researcher), login(labeler), login(outsider)


def _run(project, model_dir):
    return services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)})


def test_runs_page_for_researchers_only(clients, client):
    project, researcher, labeler, outsider = clients
    url = reverse("training:project_runs", args=[project.slug])
    assert client.get(url).status_code == 302  # login first
    assert outsider.get(url).status_code == 404
    assert labeler.get(url).status_code == 403  # labelers see no training
    assert b"Launch run" in researcher.get(url).content


def test_launch_from_the_form(clients, model_dir, sent):
    project, researcher, labeler, _ = clients
    url = reverse("training:project_runs", args=[project.slug])
    data = {"base_model_path": str(model_dir), "epochs": "2", "learning_rate": "0.0001", "batch_size": "4",
            "max_length": "128", "eval_fraction": "0.2", "lora_r": "8"}
    assert labeler.post(url, data).status_code == 403
    response = researcher.post(url, data)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training:run_detail", args=[run.pk])
    assert run.config["epochs"] == 2.0 and run.config["lora_r"] == 0 and run.launched_by.username == "rita"


def test_launch_with_a_missing_model_directory_is_a_400_and_writes_nothing(clients, tmp_path, sent):
    project, researcher, _, _ = clients
    data = {"base_model_path": str(tmp_path / "missing"), "epochs": "1", "learning_rate": "0.0001",
            "batch_size": "4", "max_length": "128", "eval_fraction": "0.2", "lora_r": "8"}
    response = researcher.post(reverse("training:project_runs", args=[project.slug]), data)
    assert response.status_code == 400 and b"Not an allowed model directory" in response.content
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists() and sent == []


def test_status_card_polls_until_terminal_then_286(clients, model_dir, sent):
    project, researcher, _, outsider = clients
    run = _run(project, model_dir)
    url = reverse("training:run_detail", args=[run.pk])
    page = researcher.get(url)
    assert page.status_code == 200 and b'hx-trigger="every 2s"' in page.content and b"run_charts.js" in page.content
    assert b"<script>" not in page.content  # CSP: no inline scripts
    card = researcher.get(url, headers={"HX-Request": "true"})
    assert card.status_code == 200 and b'id="status-card"' in card.content and b"<html" not in card.content
    assert outsider.get(url).status_code == 404
    services.run_request_cancel(run_id=run.pk)
    done = researcher.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and b"every 2s" not in done.content and b"Cancelled" in done.content


def test_cancel_needs_post_and_a_researcher(clients, model_dir, sent):
    project, researcher, labeler, outsider = clients
    run = _run(project, model_dir)
    url = reverse("training:run_cancel", args=[run.pk])
    assert researcher.get(url).status_code == 405
    assert outsider.post(url).status_code == 404
    assert labeler.post(url).status_code == 404  # labelers see no run
    assert researcher.post(url).status_code == 302
    run.refresh_from_db()
    assert run.status == Status.CANCELLED


def test_metrics_json_and_log_are_escaped(clients, model_dir, sent):
    project, researcher, _, _ = clients
    run = _run(project, model_dir)
    token = services.run_claim(run_id=run.pk, worker="w").claim_token
    services.run_report_step(run_id=run.pk, step=1, total=4, metrics={"loss": 0.69}, claim_token=token)
    services.run_append_log(run_id=run.pk, message="<script>alert(1)</script>")
    data = researcher.get(reverse("training:run_metrics", args=[run.pk])).json()
    assert data["series"]["train"] == {"step": [1], "loss": [0.69]}
    page = researcher.get(reverse("training:run_detail", args=[run.pk])).content
    assert b"<script>alert(1)" not in page and b"&lt;script&gt;alert(1)" in page


def test_artifact_download_streams_a_zip_for_researchers_only(clients, stored_model, artifact_root):
    project, researcher, labeler, outsider = clients
    (stored_model / "model.safetensors").write_bytes(b"\0" * 3000)
    artifact = services.artifact_register(project=project, kind=ModelArtifact.Kind.BASE, name="m", path=stored_model)
    url = reverse("training:artifact_download", args=[artifact.pk])
    assert outsider.get(url).status_code == 404
    assert labeler.get(url).status_code == 404
    assert labeler.get(reverse("training:artifact_detail", args=[artifact.pk])).status_code == 404
    response = researcher.get(url)
    assert response.status_code == 200 and response.streaming and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert sorted(archive.namelist()) == ["config.json", "model.safetensors"]
    assert archive.read("model.safetensors") == b"\0" * 3000
    detail = researcher.get(reverse("training:artifact_detail", args=[artifact.pk]))
    assert detail.status_code == 200 and b"Download" in detail.content
