"""Artifact files are read and written only inside ARTIFACT_ROOT (issue 10, item 4): a stored path that is
absolute elsewhere, climbs out with ``..``, or is a symlink out of the root is refused, and symlinks inside a
served directory are never followed into the zip."""
import io
import json
import os
import zipfile

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.errors import InvalidInput
from training import selectors, services
from training.artifact_paths import artifact_dir
from training.models import ModelArtifact

pytestmark = pytest.mark.django_db


@pytest.fixture
def researcher_clients(ranked, artifact_root):
    project, researcher, _ = ranked
    browser, api = Client(), APIClient()
    browser.force_login(researcher)
    api.force_authenticate(researcher)
    artifact_root.mkdir(parents=True, exist_ok=True)
    return project, browser, api


def _downloads(artifact, browser, api) -> list:
    return [browser.get(reverse("training:artifact_download", args=[artifact.pk])),
            api.get(f"/api/artifacts/{artifact.pk}/download/")]


@pytest.mark.parametrize("stored", ["/etc", "../../../etc", "runs/../../../../../etc", "."])
def test_download_refuses_a_stored_path_outside_the_root(researcher_clients, stored):
    project, browser, api = researcher_clients
    artifact = ModelArtifact.objects.create(project=project, kind="policy", name="evil", path=stored)
    for response in _downloads(artifact, browser, api):
        assert response.status_code == 403 and not getattr(response, "streaming", False)
        assert b"root:" not in response.content
    with pytest.raises(InvalidInput, match="outside the artifact root"):
        artifact_dir(artifact=artifact)


def test_download_refuses_a_symlink_under_the_root_that_points_out(researcher_clients, artifact_root):
    project, browser, api = researcher_clients
    (artifact_root / "runs" / "7").mkdir(parents=True)
    os.symlink("/etc", artifact_root / "runs" / "7" / "model")
    artifact = ModelArtifact.objects.create(project=project, kind="policy", name="link", path="runs/7/model")
    for response in _downloads(artifact, browser, api):
        assert response.status_code == 403


def test_symlinks_inside_a_served_model_are_not_followed(researcher_clients, artifact_root, tmp_path):
    project, browser, api = researcher_clients
    model = artifact_root / "runs" / "8" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "sub" / "weights.bin").write_bytes(b"w" * 10)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow").write_text("root:x:0")
    os.symlink(secret / "shadow", model / "leak.txt")  # a file symlink out of the tree
    os.symlink(secret, model / "etc")  # a directory symlink out of the tree
    os.symlink(model / "sub", model / "loop")  # a directory symlink inside the tree
    artifact = services.artifact_register(project=project, kind="policy", name="m", path=model)
    assert artifact.path == "runs/8/model" and artifact.size_bytes == len('{"model_type": "llama"}') + 10
    for response in _downloads(artifact, browser, api):
        assert response.status_code == 200
        archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
        assert sorted(archive.namelist()) == ["config.json", "sub/weights.bin"]


def test_registering_an_artifact_outside_the_root_is_refused(researcher_clients, artifact_root, model_dir):
    project, _, _ = researcher_clients
    os.symlink(model_dir, artifact_root / "outside")
    for path in (model_dir, artifact_root / "outside", artifact_root / ".." / model_dir.name, artifact_root):
        with pytest.raises(InvalidInput, match="outside the artifact root"):
            services.artifact_register(project=project, kind="base", name="x", path=path)
    assert not ModelArtifact.objects.exists()
