"""PPO/GRPO reward functions are registered hooks chosen by name (issue 10, item 1): a typed
``module:function`` gets a 400 listing the names, writes nothing, imports nothing, in the API, the browser and
the service; a stored run naming code fails in the worker without importing it."""
import importlib
import json
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.errors import InvalidInput
from training.models import DatasetSnapshot, ModelArtifact, TrainingRun
from training.policy_data import policy_data_import

POOL = [json.dumps({"messages": [{"role": "user", "content": "Continue the story about the hill."}]})]


@pytest.fixture
def imports(monkeypatch):
    seen: list[str] = []
    real = importlib.import_module

    def recording(name, package=None):
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", recording)
    return seen


@pytest.fixture
def rl_project(ranked, artifact_root):
    project, researcher, _ = ranked
    policy_data_import(project=project, lines=POOL)
    path = artifact_root / "runs" / "1" / "policy"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path="runs/1/policy")
    return project, researcher, policy


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_api_refuses_a_reward_fn_naming_code(rl_project, imports, sent, kind):
    project, researcher, policy = rl_project
    api = APIClient()
    api.force_authenticate(researcher)
    response = api.post(f"/api/projects/{project.slug}/runs/",
                        {"kind": kind, "base_artifact": policy.pk, "config": {"reward_fn": "os:system"}}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["location"] == "config.reward_fn" and "choose one of: default, demo" in body["error"]
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists() and sent == []
    assert "os" not in imports


def test_browser_refuses_a_reward_fn_naming_code(rl_project, imports, sent):
    project, researcher, policy = rl_project
    browser = Client()
    browser.force_login(researcher)
    url = reverse("training:policy_run", args=[project.slug])
    page = browser.get(reverse("training:project_lineage", args=[project.slug])).content.decode()
    assert '<option value="demo">demo</option>' in page  # the registered names are offered in a select
    typed = browser.post(url, {"kind": "grpo", "policy": policy.pk, "config": '{"reward_fn": "os:system"}'})
    assert typed.status_code == 400 and "is not a registered reward_fn hook" in typed.content.decode()
    chosen = browser.post(url, {"kind": "ppo", "policy": policy.pk, "reward_fn": "os:system", "config": "{}"})
    assert chosen.status_code == 400 and "Select a valid choice" in chosen.content.decode()
    assert not TrainingRun.objects.exists() and sent == [] and "os" not in imports
    ok = browser.post(url, {"kind": "grpo", "policy": policy.pk, "reward_fn": "demo", "config": "{}"})
    assert ok.status_code == 302 and TrainingRun.objects.get().config["reward_fn"] == "demo"


def test_a_stored_run_naming_code_fails_in_the_worker_without_import(rl_project, imports):
    from training.ml.types import NullHooks
    from training.jobs.rl import grpo_job

    project, _, policy = rl_project
    run = TrainingRun.objects.create(project=project, kind="grpo", base_artifact=policy, status="running",
                                     config={"base_model": str(policy.path), "reward_fn": "os:system"})
    with pytest.raises(InvalidInput, match="not a registered reward_fn hook") as error:
        grpo_job(run, Path("/nonexistent"), NullHooks())
    assert error.value.location == "config.reward_fn" and "os" not in imports
