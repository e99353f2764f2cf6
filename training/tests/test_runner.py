"""The run runner: the child side in-process (success, cancel), the parent's exit-code mapping with a real
child process, and building RankedGroups from a snapshot."""
import sys

import pytest
from django.core.management import call_command
from django.db import connection

from annotation.models import PairwiseComparison
from training import runner, services, supervisor
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.artifact_paths import artifact_dir
from training.selectors import snapshot_ranked_groups
from training.tests.conftest import rank_all

Status = TrainingRun.Status
FAST = {"epochs": 3.0, "batch_size": 4, "learning_rate": 3e-3, "eval_every": 2, "checkpoint_every": 2,
        "eval_fraction": 0.25, "max_length": 64}


@pytest.fixture
def tiny_project(make_user, make_project, artifact_root):
    researcher, labeler = make_user("rita"), make_user("lars")
    project = make_project(slug="tiny", k=4, prompts=12, labelers=[labeler], researchers=[researcher])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", "tiny", "--hidden", "32", "--vocab-size", "300")
    base = ModelArtifact.objects.get(project=project, name="tiny-reward-model")
    return project, researcher, base


def _launch(project, base, sent, **config):
    run = services.run_create(project=project, kind="reward", config={**FAST, **config}, base_artifact=base)
    assert sent == [] or sent[-1] == run.id
    return run, services.run_claim(run_id=run.id, worker="test").claim_token


@pytest.mark.django_db
def test_snapshot_ranked_groups_carry_tiers_weights_and_logprobs(ranked, model_dir, sent):
    project, researcher, _ = ranked
    prompt = project.prompts.order_by("id").first()
    first, second = prompt.samples.order_by("position")[:2]
    first.logprob = -3.5
    first.save()
    PairwiseComparison.objects.filter(prompt=prompt).update(weight=0.5)
    run = services.run_create(project=project, kind="reward", config={"base_model": str(model_dir)})
    groups = snapshot_ranked_groups(snapshot=run.snapshot)
    assert len(groups) == 6
    group = next(g for g in groups if g.prompt_id == prompt.id)
    assert group.responses[:2] == [first.text, second.text]
    assert group.rankings == [[[0], [1], [2], [3]]] and group.weights == [0.5]
    assert group.ref_logprobs == [-3.5, None, None, None] and len(group.pairs()) == 6


@pytest.mark.slow
@pytest.mark.django_db
def test_child_trains_registers_a_loadable_model_and_finishes(tiny_project, sent):
    from transformers import AutoModelForSequenceClassification

    project, _, base = tiny_project
    run, token = _launch(project, base, sent)
    assert runner.run_claimed(run_id=run.id, claim_token=token) == runner.EXIT_OK
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.step == run.total_steps > 0 and "succeeded" in run.log_tail
    losses = [p.values["loss"] for p in MetricPoint.objects.filter(run=run, split="train").order_by("step")]
    assert len(losses) == run.total_steps and min(losses[-3:]) < losses[0]
    assert MetricPoint.objects.filter(run=run, split="eval").exists()
    artifact = run.artifact
    assert artifact.kind == "reward" and artifact.parent == base and artifact.snapshot == run.snapshot
    assert artifact.rounds == [1] and "eval_accuracy" in artifact.metrics
    model = AutoModelForSequenceClassification.from_pretrained(artifact_dir(artifact=artifact))
    assert model.config.num_labels == 1
    assert (artifact_dir(artifact=artifact).parent / "checkpoints").is_dir()


@pytest.mark.slow
@pytest.mark.django_db
def test_cancel_stops_at_the_next_step_and_keeps_a_checkpoint(tiny_project, sent, monkeypatch):
    project, researcher, base = tiny_project
    run, token = _launch(project, base, sent, checkpoint_every=100)
    original = runner.DatabaseHooks.on_step

    def on_step(self, step, total, metrics):
        original(self, step, total, metrics)
        if step == 3:
            services.run_request_cancel(run_id=run.id, user=researcher)

    monkeypatch.setattr(runner.DatabaseHooks, "on_step", on_step)
    assert runner.run_claimed(run_id=run.id, claim_token=token) == runner.EXIT_CANCELLED
    run.refresh_from_db()
    assert run.status == Status.CANCELLED and run.step == 3 < run.total_steps
    assert run.summary["stopped"] is True and not ModelArtifact.objects.filter(run=run).exists()
    checkpoints = artifact_dir(artifact=base).parents[2] / "runs" / str(run.id) / "checkpoints"
    assert [int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.name.startswith("step-")] == [3]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_parent_maps_a_crashing_child_to_retry_then_failed(make_user, make_project, tmp_path, monkeypatch,
                                                           settings, sent):
    """A real child process that crashes (a runtime error, which another attempt may not meet again)."""
    if connection.vendor != "postgresql":
        pytest.skip("the child process needs the shared PostgreSQL test database")
    monkeypatch.setenv("TEST_PG_NAME", connection.settings_dict["NAME"])
    monkeypatch.setenv("RLHF_VAR_DIR", str(tmp_path / "var"))
    settings.ARTIFACT_ROOT = tmp_path / "var" / "test-artifacts"
    settings.RUN_MAX_ATTEMPTS = 2
    labeler = make_user("lars")
    project = make_project(slug="crash", k=3, prompts=3, labelers=[labeler])
    rank_all(project, labeler)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    run = services.run_create(project=project, kind="reward", config={"base_model": str(model)})
    crash = "import sys; print('training...', flush=True); raise RuntimeError('CUDA error: an illegal memory access')"
    monkeypatch.setattr("training.supervisor.child_command", lambda **kwargs: [sys.executable, "-c", crash])
    for attempt in (1, 2):
        claimed = services.run_claim(run_id=run.id, worker="test")
        outcome = supervisor.supervise(run_id=run.id, claim_token=claimed.claim_token, attempt=attempt)
        run.refresh_from_db()
        assert outcome == run.status == (Status.QUEUED if attempt == 1 else Status.FAILED)
        assert "exited with code 1" in run.error and len(run.error.splitlines()) > 2  # with the log tail
    assert "Failed after 2 attempts" in run.error


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_config_error_in_a_real_child_fails_at_once_without_retries(make_user, make_project, tmp_path,
                                                                      monkeypatch, settings, sent):
    """A model directory of an unknown architecture cannot heal: one attempt, FAILED, the setting named."""
    if connection.vendor != "postgresql":
        pytest.skip("the child process needs the shared PostgreSQL test database")
    monkeypatch.setenv("TEST_PG_NAME", connection.settings_dict["NAME"])
    monkeypatch.setenv("RLHF_VAR_DIR", str(tmp_path / "var"))
    settings.ARTIFACT_ROOT = tmp_path / "var" / "test-artifacts"
    labeler = make_user("lars")
    project = make_project(slug="broken", k=3, prompts=3, labelers=[labeler])
    rank_all(project, labeler)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    run = services.run_create(project=project, kind="reward", config={"base_model": str(broken)})
    claimed = services.run_claim(run_id=run.id, worker="test")
    outcome = supervisor.supervise(run_id=run.id, claim_token=claimed.claim_token, attempt=1)
    run.refresh_from_db()
    assert outcome == Status.FAILED, run.error
    assert run.status == Status.FAILED and run.attempts == 1 and run.max_attempts == 3
    assert run.error.startswith("base_model: cannot be loaded")  # the tokenizer is the first thing it cannot load


@pytest.mark.django_db
def test_lora_target_modules_the_model_lacks_fail_at_once(tiny_project, sent):
    project, _, base = tiny_project
    run, token = _launch(project, base, sent, lora_r=4, lora_target_modules=["no_such_module"])  # the model lacks it
    assert runner.run_claimed(run_id=run.id, claim_token=token) == runner.EXIT_FAILED
    run.refresh_from_db()
    assert run.status == Status.FAILED and run.attempts == 1
    assert run.error.startswith("lora_target_modules: cannot be loaded (['no_such_module'])")
