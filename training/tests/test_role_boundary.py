"""Labelers see nothing of training; researchers see runs without server paths or tracebacks; admins see all.

Reproduces issue #10 item 7: a labeler got 200 on runs (configs with absolute paths, logs, tracebacks),
artifacts, lineage and model zips, in the browser and the API.
"""
import pytest
from django.test import Client

from training import services
from training.models import ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db

TRACEBACK = (
    "The training process exited with code 1.\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/rlhf/.venv/lib/python3.11/site-packages/transformers/modeling_utils.py", line 3, in load\n'
    "    raise OSError(path)\n"
    "OSError: no model at /srv/models/secret-base"
)


@pytest.fixture
def world(ranked, make_user, stored_model, artifact_root):
    project, researcher, labeler = ranked
    admin = make_user("root", is_superuser=True, is_staff=True)
    run = TrainingRun.objects.create(
        project=project, kind=TrainingRun.Kind.REWARD, status=TrainingRun.Status.FAILED, error=TRACEBACK,
        config={"base_model": "/srv/models/secret-base", "epochs": 1},
        log_tail='12:00:00 failed: File "/srv/rlhf/training/jobs.py", line 9\n',
    )
    (stored_model / "model.safetensors").write_bytes(b"\0" * 10)
    artifact = services.artifact_register(project=project, kind=ModelArtifact.Kind.REWARD, name="rm", path=stored_model,
                                          run=run, base_model="/srv/models/secret-base")

    def login(user):
        client = Client()
        client.force_login(user)
        return client

    return {"project": project, "run": run, "artifact": artifact, "admin": login(admin),
            "researcher": login(researcher), "labeler": login(labeler)}


def _routes(world):
    slug, run, artifact = world["project"].slug, world["run"].pk, world["artifact"].pk
    return [  # (method, url, the status a labeler gets)
        ("get", f"/training/projects/{slug}/runs/", 403),
        ("get", f"/training/projects/{slug}/lineage/", 403),
        ("get", f"/training/runs/{run}/", 404),
        ("get", f"/training/runs/{run}/metrics.json", 404),
        ("get", f"/training/artifacts/{artifact}/", 404),
        ("get", f"/training/artifacts/{artifact}/download/", 404),
        ("get", f"/api/projects/{slug}/runs/", 403),
        ("get", f"/api/projects/{slug}/artifacts/", 403),
        ("get", f"/api/projects/{slug}/lineage/", 403),
        ("post", f"/api/projects/{slug}/rounds/", 403),
        ("get", f"/api/runs/{run}/", 404),
        ("post", f"/api/runs/{run}/cancel/", 404),
        ("get", f"/api/artifacts/{artifact}/", 404),
        ("get", f"/api/artifacts/{artifact}/download/", 404),
    ]


def test_a_labeler_gets_nothing_of_training(world):
    for method, url, expected in _routes(world):
        response = getattr(world["labeler"], method)(url)
        assert response.status_code == expected, (method, url, response.status_code)
        body = b"" if getattr(response, "streaming", False) else response.content
        assert b"secret-base" not in body and b"Traceback" not in body, url


def test_researchers_and_admins_still_reach_every_training_route(world):
    for who in ("researcher", "admin"):
        for method, url, _ in _routes(world):
            if method == "get":
                assert getattr(world[who], method)(url).status_code == 200, (who, url)


def test_labelers_do_not_see_the_training_links(world):
    page = world["labeler"].get(f"/p/{world['project'].slug}/").content.decode()
    assert "/training/" not in page


def test_researchers_see_a_sanitized_error_without_paths_or_traceback(world):
    run, artifact = world["run"], world["artifact"]
    for url in (f"/training/runs/{run.pk}/", f"/api/runs/{run.pk}/", f"/api/projects/{world['project'].slug}/runs/",
                f"/training/artifacts/{artifact.pk}/", f"/api/artifacts/{artifact.pk}/",
                f"/api/projects/{world['project'].slug}/artifacts/"):
        body = world["researcher"].get(url).content.decode()
        for leak in ("/srv/", "Traceback", "site-packages", 'File "'):
            assert leak not in body, (url, leak)
    detail = world["researcher"].get(f"/api/runs/{run.pk}/").json()
    assert detail["error"] == "The training process exited with code 1.\nOSError: no model at <server path>"
    assert detail["config"] == {"base_model": "<server path>", "epochs": 1}
    page = world["researcher"].get(f"/training/runs/{run.pk}/").content.decode()
    assert "OSError: no model at &lt;server path&gt;" in page


def test_admins_see_server_paths_and_tracebacks(world):
    run = world["run"]
    detail = world["admin"].get(f"/api/runs/{run.pk}/").json()
    assert detail["error"] == TRACEBACK and detail["config"]["base_model"] == "/srv/models/secret-base"
    assert "Traceback (most recent call last)" in world["admin"].get(f"/training/runs/{run.pk}/").content.decode()
    artifact = world["admin"].get(f"/api/artifacts/{world['artifact'].pk}/").json()
    assert artifact["base_model"] == "/srv/models/secret-base"


def test_arena_generation_errors_hide_server_paths_from_researchers(world, make_user):
    from lab.services import arena_create
    from lab.models import Arena

    project = world["project"]
    policies = [ModelArtifact.objects.create(project=project, kind=ModelArtifact.Kind.POLICY, name=f"p{i}",
                                             path=f"missing/p{i}") for i in range(2)]
    arena = arena_create(project=project, model_a=policies[0], model_b=policies[1], name="gen", items=["a prompt"])
    Arena.objects.filter(pk=arena.pk).update(status=Arena.Status.GENERATING,
                                             summary={"error": "OSError: no model at /srv/models/p0"})
    page = world["researcher"].get(f"/p/{project.slug}/arena/").content.decode()
    assert "Generation failed: OSError: no model at &lt;server path&gt;" in page and "/srv/" not in page
    listed = world["researcher"].get(f"/api/projects/{project.slug}/arenas/").json()
    assert listed[0]["summary"] == {"error": "OSError: no model at <server path>"}
    assert "/srv/models/p0" in world["admin"].get(f"/p/{project.slug}/arena/").content.decode()
