"""Users choose models as their own project's artifacts, or directories under the operator's model roots
(issue 10, items 2, 5 and 8): never another project's run directory, never an arbitrary server path, never a
hub id while the hub is off; one answer for missing and forbidden paths; a missing DPO adapter is refused."""
import json
import os

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from lab.ai_labelers.services import ai_labeler_create
from annotation.errors import InvalidInput
from annotation.quality.models import AILabeler
from training import services
from training.models import DatasetSnapshot, ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db


def _model(path, *, adapter=False):
    path.mkdir(parents=True)
    (path / ("adapter_config.json" if adapter else "config.json")).write_text(json.dumps({"model_type": "llama"}))
    return path


@pytest.fixture
def two_projects(make_user, make_project, artifact_root, tmp_path, settings):
    """Project A owns a trained policy under ARTIFACT_ROOT; a researcher of project B attacks it.
    The operator's model root is tmp_path, a parent of ARTIFACT_ROOT (the worst case)."""
    alice, bob = make_user("alice"), make_user("bob")
    project_a = make_project(slug="a", researchers=[alice])
    project_b = make_project(slug="b", researchers=[bob])
    a_policy_dir = _model(artifact_root / "runs" / "1" / "policy")
    a_policy = ModelArtifact.objects.create(project=project_a, kind="policy", name="a", path="runs/1/policy")
    shared = _model(tmp_path / "operator-models" / "base")
    settings.RLHF_MODEL_ROOTS = [str(tmp_path)]
    api, browser = APIClient(), Client()
    api.force_authenticate(bob)
    browser.force_login(bob)
    return {"b": project_b, "bob": bob, "a_dir": a_policy_dir, "a_policy": a_policy, "shared": shared,
            "api": api, "browser": browser, "root": tmp_path}


def _nothing_written():
    return not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists()


def test_sft_in_project_b_from_project_a_policy_directory_is_refused(two_projects, sent):
    t = two_projects
    for kind in ("sft", "reward", "dpo"):
        response = t["api"].post("/api/projects/b/runs/", {"kind": kind, "config": {"base_model": str(t["a_dir"])}},
                                 format="json")
        assert response.status_code == 400, response.content
        assert response.json()["location"] == "config.base_model"
        assert "Not an allowed model directory" in response.json()["error"]
    by_id = t["api"].post("/api/projects/b/runs/", {"kind": "sft", "base_artifact": t["a_policy"].pk, "config": {}},
                          format="json")
    assert by_id.status_code == 400 and by_id.json()["location"] == "base_artifact"
    form = t["browser"].post(reverse("training:project_runs", args=["b"]), {
        "base_model_path": str(t["a_dir"]), "epochs": "1", "learning_rate": "0.0001", "batch_size": "4",
        "max_length": "128", "eval_fraction": "0.2", "lora_r": "8"})
    assert form.status_code == 400 and b"Not an allowed model directory" in form.content
    assert _nothing_written() and sent == []


@pytest.mark.parametrize("field", ["adapter", "reward_model"])
def test_every_model_setting_follows_the_same_rule(two_projects, field, sent):
    t = two_projects
    kind = "dpo" if field == "adapter" else "ppo"
    response = t["api"].post("/api/projects/b/runs/", {
        "kind": kind, "config": {"base_model": str(t["shared"]), field: str(t["a_dir"])}}, format="json")
    assert response.status_code == 400 and response.json()["location"] == f"config.{field}"
    assert _nothing_written()


def test_missing_and_forbidden_paths_get_the_same_answer(two_projects, tmp_path):
    t = two_projects
    outside = _model(tmp_path.parent / f"{tmp_path.name}-outside" / "model")
    os.symlink(outside, t["root"] / "link-out")
    (t["root"] / "empty").mkdir()
    typed = ["/etc", "/nonexistent/model", str(t["root"] / "missing"), str(t["root"] / "empty"),
             str(t["root"] / ".." / outside.parent.name / "model"), str(t["root"] / "link-out"), str(t["a_dir"]),
             str(t["root"]), "relative/../dir", "./here"]
    answers = set()
    for value in typed:
        with pytest.raises(InvalidInput) as error:
            services.run_create(project=t["b"], kind="reward", config={"base_model": value}, user=t["bob"])
        answers.add((error.value.location, error.value.message))
    assert len(answers) == 1 and _nothing_written()


def test_a_directory_under_the_operator_roots_is_accepted_resolved(two_projects, ranked, sent):
    t = two_projects
    project, researcher, _ = ranked
    os.symlink(t["shared"], t["root"] / "operator-models" / "alias")  # a symlink inside a root, to a model inside it
    alias = str(t["root"] / "operator-models" / "alias")
    run = services.run_create(project=project, kind="reward", config={"base_model": alias}, user=researcher)
    assert run.config["base_model"] == str(t["shared"])


def test_hub_ids_are_refused_while_the_hub_is_off(two_projects, ranked, settings, sent):
    t = two_projects
    for value in ("gpt2", "org/model"):
        response = t["api"].post("/api/projects/b/runs/", {"kind": "reward", "config": {"base_model": value}},
                                 format="json")
        assert response.status_code == 400 and "RLHF_ALLOW_MODEL_HUB is off" in response.json()["error"]
        with pytest.raises(InvalidInput, match="model hub id"):  # the operator too: workers are offline
            services.run_create(project=t["b"], kind="reward", config={"base_model": value})
    assert _nothing_written()
    settings.RLHF_ALLOW_MODEL_HUB = True
    project, researcher, _ = ranked
    run = services.run_create(project=project, kind="reward", config={"base_model": "org/model"}, user=researcher)
    assert run.config["base_model"] == "org/model"


def test_a_dpo_adapter_that_does_not_exist_is_refused_at_creation(two_projects, ranked, stored_model, sent):
    project = ranked[0]
    for adapter in (str(stored_model.parent / "no-such-adapter"), "/nonexistent/adapter"):
        with pytest.raises(InvalidInput, match="does not exist") as error:  # the operator, at the command line
            services.run_create(project=project, kind="dpo", config={"base_model": str(stored_model),
                                                                     "adapter": adapter})
        assert error.value.location == "config.adapter"
    assert _nothing_written()


def test_llm_judge_takes_an_own_artifact_or_a_shared_directory(two_projects):
    t = two_projects
    for spec in (str(t["a_dir"]), str(t["a_policy"].pk), "/etc", "gpt2"):
        with pytest.raises(InvalidInput) as error:
            ai_labeler_create(project=t["b"], name="judge", kind="llm_judge", spec=spec)
        assert error.value.location == "spec"
    response = t["api"].post("/api/projects/b/quality/ai-labelers/",
                             {"name": "judge", "kind": "llm_judge", "spec": str(t["a_dir"])}, format="json")
    assert response.status_code == 400 and not AILabeler.objects.exists()
    own = ModelArtifact.objects.create(project=t["b"], kind="policy", name="b", path="runs/1/policy")
    assert ai_labeler_create(project=t["b"], name="own", kind="llm_judge", spec=str(own.pk)).spec == str(own.pk)
    assert ai_labeler_create(project=t["b"], name="shared", kind="llm_judge", spec=str(t["shared"])).kind == "llm_judge"


def test_training_processes_run_with_the_hub_offline(settings, monkeypatch):
    import subprocess
    import sys

    from training.run_process import child_environment
    from training.tasks import _models_offline

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")  # recorded, so the worker handler's writes are undone after the test
        monkeypatch.delenv(name)
    env = child_environment(claim_token="t")
    assert env["RLHF_CLAIM_TOKEN"] == "t"
    assert {env[n] for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")} == {"1"}
    seen = subprocess.run([sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "True"  # the library itself reads the worker's setting as offline
    _models_offline()  # the Celery worker's own process (worker_init)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    settings.RLHF_ALLOW_MODEL_HUB = True
    assert "HF_HUB_OFFLINE" not in child_environment(claim_token="t")


def test_the_launch_form_offers_the_shared_models_only(two_projects):
    t = two_projects
    _model(t["root"] / "another")  # directly under the root: offered
    page = t["browser"].get(reverse("training:project_runs", args=["b"])).content.decode()
    assert f'<option value="{t["root"] / "another"}">' in page and 'list="shared-models"' in page
    assert str(t["a_dir"]) not in page  # project A's runs (inside ARTIFACT_ROOT) are never offered
