"""DPO's reference policy (issue 12, the round-0 anchor on the database): a researcher chooses a policy of their
own project as a DPO run's reference (API, browser form, CLI); the Django loop with ``dpo_reference="round0"``
gives every DPO run round 0's policy (the oldest policy of the lineage, as the health gate finds it) as its
reference; the run's config stores it root-relative, the run page and API say which reference it used; a
reference that cannot be loaded fails the run at once, naming ``reference_model``."""
import json
import math

import pytest
import torch

from annotation.errors import InvalidInput
from training import runner, services
from training.artifact_paths import ROOT_PREFIX, artifact_dir
from training.health import health_settings_update
from training.models import DatasetSnapshot, ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db
LAX_HEALTH = {"min_eos_rate": 0.0, "min_distinct_rate": 0.0, "max_nll_rise": 100.0, "prompts": 8}


def _policy(project, path, name):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return services.artifact_register(project=project, kind=ModelArtifact.Kind.POLICY, name=name, path=path)


@pytest.fixture
def two_projects(ranked, make_project, make_user, artifact_root, client):
    """Project B (``ranked``: rita researches it, round 1 ranked) with policies b0 and b1, and project A with
    policy a0, which rita may not see."""
    project_b, researcher, _ = ranked
    b0 = _policy(project_b, artifact_root / "runs" / "1" / "policy", "b0")
    b1 = _policy(project_b, artifact_root / "runs" / "2" / "policy", "b1")
    project_a = make_project(slug="other", researchers=[make_user("alice")])
    a0 = _policy(project_a, artifact_root / "runs" / "3" / "policy", "a0")
    client.force_login(researcher)
    return project_b, researcher, b0, b1, a0, client


def _nothing_written(before: dict) -> bool:
    return (TrainingRun.objects.count(), DatasetSnapshot.objects.count()) == (before["runs"], before["snapshots"])


def test_another_projects_policy_or_a_server_path_as_reference_is_refused_and_nothing_written(two_projects, sent,
                                                                                              model_dir, artifact_root):
    project, researcher, b0, b1, a0, client = two_projects
    url = f"/api/projects/{project.slug}/runs/"
    body = {"kind": "dpo", "base_artifact": b1.pk, "config": {"num_threads": 1}}
    before = {"runs": 0, "snapshots": 0}

    stolen = client.post(url, {**body, "reference_artifact": a0.pk}, content_type="application/json")
    assert stolen.status_code == 400 and stolen.json()["location"] == "reference_artifact"
    form_url = f"/training/projects/{project.slug}/lineage/policy-run/"
    form = {"kind": "dpo", "policy": b1.pk, "config": "{}", "sources": "human"}
    page = client.post(form_url, {**form, "reference_artifact": a0.pk})
    assert page.status_code == 400 and "reference_artifact" in page.context["run_form"].errors
    with pytest.raises(InvalidInput, match="policy of this project") as error:  # the service's own rule
        services.run_create(project=project, kind="dpo", config={}, base_artifact=b1, reference_artifact=a0,
                            user=researcher)
    assert error.value.location == "reference_artifact"
    for typed in ("/etc", "/etc/", f"{model_dir}/../base-model", "../base-model", "base/../../etc",
                  f"{ROOT_PREFIX}../etc", str(artifact_dir(artifact=b0))):  # a typed path inside the root too
        refused = client.post(url, {**body, "config": {"reference_model": typed}}, content_type="application/json")
        assert refused.status_code == 400 and refused.json()["location"] == "config.reference_model", (typed, refused)
    rm_dir = artifact_root / "runs" / "4" / "model"
    rm_dir.mkdir(parents=True)
    (rm_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    rm = services.artifact_register(project=project, kind=ModelArtifact.Kind.REWARD, name="rm", path=rm_dir)
    for reference, kind in ((rm.pk, "dpo"), (b0.pk, "sft")):  # not a policy; a kind that takes no reference
        wrong = client.post(url, {**body, "kind": kind, "reference_artifact": reference},
                            content_type="application/json")
        assert wrong.status_code == 400 and wrong.json()["location"] == "reference_artifact", wrong.json()
    assert _nothing_written(before) and sent == []

    chosen = client.post(url, {**body, "reference_artifact": b0.pk}, content_type="application/json")
    assert chosen.status_code == 201, chosen.json()
    run = TrainingRun.objects.get(pk=chosen.json()["id"])
    assert run.config["reference_model"] == ROOT_PREFIX + b0.path  # stored relative to the artifact root
    assert chosen.json()["reference"] == {"source": "artifact", "artifact": b0.pk, "name": "b0",
                                          "path": ROOT_PREFIX + b0.path}
    shown = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert 'id="dpo-reference"' in shown and f"/training/artifacts/{b0.pk}/" in shown
    via_form = client.post(form_url, {**form, "reference_artifact": b0.pk})
    assert via_form.status_code == 302
    assert TrainingRun.objects.order_by("-id").first().config["reference_model"] == ROOT_PREFIX + b0.path
    typed = client.post(url, {**body, "config": {"reference_model": str(model_dir)}}, content_type="application/json")
    assert typed.status_code == 201 and typed.json()["reference"]["source"] == "directory"  # under a model root
    default = client.post(url, body, content_type="application/json").json()
    assert default["config"]["reference_model"] == "" and default["reference"]["source"] == "stored"
    assert "the stored generation log-probs" in client.get(f"/training/runs/{default['id']}/").content.decode()


def test_the_reference_is_contained_again_when_the_run_starts(two_projects, sent):
    from training.jobs.base import run_config

    project, researcher, b0, b1, _, _ = two_projects
    run = services.run_create(project=project, kind="dpo", config={}, base_artifact=b1, reference_artifact=b0,
                              user=researcher)
    assert run_config(run).reference_model == str(artifact_dir(artifact=b0))  # resolved on this worker's root
    for tampered in (f"{ROOT_PREFIX}../../etc", "/etc"):
        run.config = {**run.config, "reference_model": tampered}
        with pytest.raises(InvalidInput) as error:
            run_config(run)
        assert error.value.location == "config.reference_model"


@pytest.mark.slow
def test_a_reference_that_cannot_be_loaded_fails_the_run_at_once(two_projects, artifact_root):
    """A reference chosen at launch whose weights are gone when the run starts: ConfigError, one attempt."""
    from training.ml import demo_task

    project, researcher, _, _, _, _ = two_projects
    base = demo_task.build_demo_base(artifact_root / "demo" / "base", seed=0, hidden=32)
    policy = services.artifact_register(project=project, kind=ModelArtifact.Kind.POLICY, name="tiny", path=base)
    broken_dir = artifact_root / "demo" / "broken"
    broken_dir.mkdir()
    for item in base.iterdir():
        if item.is_file():
            (broken_dir / item.name).write_bytes(item.read_bytes())
    broken = services.artifact_register(project=project, kind=ModelArtifact.Kind.POLICY, name="broken",
                                        path=broken_dir)
    run = services.run_create(project=project, kind="dpo", base_artifact=policy, reference_artifact=broken,
                              user=researcher, config={"num_threads": 1, "health_every": 0})
    for weights in broken_dir.glob("*.safetensors"):
        weights.unlink()
    claimed = services.run_claim(run_id=run.pk, worker="test")
    assert runner.run_claimed(run_id=run.pk, claim_token=claimed.claim_token) == runner.EXIT_FAILED
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and run.attempts == 1 and run.step == 0
    assert run.error.startswith("reference_model: cannot be loaded"), run.error
    assert not ModelArtifact.objects.filter(run=run).exists()


# ----------------------------------------------------------------------------- the Django loop's round-0 anchor
def _first_step_loss(run: TrainingRun) -> float:
    return run.metrics.filter(split="train").order_by("step").first().values["loss"]


def _loss_with_reference(run: TrainingRun, reference: str) -> float:
    """The run's first-step DPO loss recomputed from its starting policy with the reference log-probs of
    ``reference``: "stored" (each sample's generation log-prob) or "round0" (round 0's policy, scored now).
    One step holds every prompt here (batch size ≥ prompts), so the batch's order does not matter."""
    from training.jobs.base import run_config
    from training.ml.trainers.dpo import dpo_batch, encode_dpo_groups, reference_logprobs
    from training.selectors import policy_load, snapshot_ranked_groups

    config = run_config(run)
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    model, tokenizer = policy_load(run.base_artifact)
    if reference == "stored":
        refs = [[float(lp) for lp in g.ref_logprobs] for g in groups]
    else:
        refs = reference_logprobs(config.reference_model, groups, config)
    data = encode_dpo_groups(tokenizer, groups, refs, config)
    assert len(data) <= config.batch_size
    with torch.no_grad():
        return dpo_batch(model.train(), data, config, tokenizer.pad_token_id)["loss"].item()


@pytest.mark.slow
def test_the_django_loop_anchors_dpo_to_round_0s_policy(make_user, make_project, artifact_root, capsys):
    from training.loop import LoopSettings, loop_run
    from training.ml.demo_task import NOUNS, demo_prompt, load_demonstrations
    from training.policy_data import policy_data_import
    from training.selectors import run_reference

    project = make_project(slug="anchor", k=4, prompts=0, researchers=[make_user("rita")])
    lines = [json.dumps({"messages": m, "response": r}) for m, r in load_demonstrations()[:200]]
    lines += [json.dumps({"messages": demo_prompt(n)}) for n in NOUNS]
    policy_data_import(project=project, lines=lines)
    health_settings_update(project=project, thresholds=LAX_HEALTH)  # tiny policies: the gate is tested elsewhere
    figures = loop_run(project=project, settings=LoopSettings(
        rounds=2, in_process=True, prompts_per_round=6, overrides={
            "sft_steps": 20, "reward_steps": 2, "max_new_tokens": 12, "dpo_epochs": 3.0, "dpo_learning_rate": 1e-2,
            "dpo_reference": "round0"}))
    assert len(figures) == 3
    round0 = ModelArtifact.objects.get(project=project, run__kind="sft")
    first, second = TrainingRun.objects.filter(project=project, kind="dpo").order_by("id")
    assert second.base_artifact == first.artifact and first.base_artifact == round0  # policy 1 trained round 2's
    for run in (first, second):  # both scored against round 0's policy, stored relative to the artifact root
        assert run.config["reference_model"] == ROOT_PREFIX + round0.path
        assert run_reference(run=run)["artifact"] == round0.pk and "stored values not used" in run.log_tail

    # round 1's DPO starts from round 0's policy itself: the anchor gives the stored log-probs' loss
    stored_first = _loss_with_reference(first, "stored")
    assert _first_step_loss(first) == pytest.approx(stored_first, abs=1e-4)
    # round 2's starts from policy 1, which generated its samples: round 0's reference is another loss
    recorded, stored = _first_step_loss(second), _loss_with_reference(second, "stored")
    assert recorded == pytest.approx(_loss_with_reference(second, "round0"), abs=1e-4)
    assert abs(recorded - stored) > 1e-2, (recorded, stored)
    assert math.isfinite(recorded)
