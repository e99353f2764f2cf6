"""train_reward_model, train_policy and build_tiny_models from the command line."""
import json

import pytest
from django.core.management import CommandError, call_command

from training.models import ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db


def test_train_reward_model_queues_the_same_run_as_the_button(ranked, model_dir, tmp_path, sent, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 3, "lora_r": 4}))
    call_command("train_reward_model", "--project", "ranked", "--base", str(model_dir), "--config", str(config))
    run = TrainingRun.objects.get()
    assert run.kind == "reward" and run.config["epochs"] == 3.0 and run.config["lora_r"] == 4
    assert run.config["base_model"] == str(model_dir) and "36 pairs" in capsys.readouterr().out


def test_train_reward_model_rejects_bad_input_and_writes_nothing(ranked, model_dir, tmp_path, sent):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": -1}))
    with pytest.raises(CommandError, match="config.epochs"):
        call_command("train_reward_model", "--project", "ranked", "--base", str(model_dir), "--config", str(bad))
    with pytest.raises(CommandError, match="no base model"):
        call_command("train_reward_model", "--project", "ranked")
    with pytest.raises(CommandError, match="No project"):
        call_command("train_reward_model", "--project", "nope", "--base", str(model_dir))
    assert not TrainingRun.objects.exists()


def test_train_policy_queues_a_dpo_run_from_a_registered_policy(
    ranked, stored_model, sent, capsys, django_capture_on_commit_callbacks
):
    project = ranked[0]
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    with django_capture_on_commit_callbacks(execute=True):
        call_command("train_policy", "--project", "ranked", "--kind", "dpo", "--policy", str(policy.pk))
    run = TrainingRun.objects.get()
    assert run.kind == "dpo" and run.config["base_model"] == "$RLHF_ARTIFACT_ROOT/base/fixture/model"
    assert run.base_artifact == policy
    assert run.snapshot.num_pairs == 36 and sent == [run.pk] and "36 pairs" in capsys.readouterr().out


def test_train_policy_rejects_bad_input_and_writes_nothing(ranked, stored_model, sent):
    project = ranked[0]
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    reward = ModelArtifact.objects.create(project=project, kind="reward", name="rm", path=str(stored_model))
    with pytest.raises(CommandError, match="takes no reward model"):
        call_command("train_policy", "--project", "ranked", "--kind", "dpo", "--policy", str(policy.pk),
                     "--reward", str(reward.pk))
    with pytest.raises(CommandError, match="no model artifact with that id"):
        call_command("train_policy", "--project", "ranked", "--kind", "ppo", "--policy", "999999")
    with pytest.raises(CommandError, match="No project"):
        call_command("train_policy", "--project", "nope", "--kind", "dpo", "--policy", str(policy.pk))
    assert not TrainingRun.objects.exists() and sent == []


@pytest.mark.slow
def test_build_tiny_models_registers_loadable_base_models(ranked, artifact_root):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from training.artifact_paths import artifact_dir

    for _ in range(2):  # idempotent: the second build updates the same rows
        call_command("build_tiny_models", "--project", "ranked", "--hidden", "32", "--vocab-size", "300")
    reward, policy = (ModelArtifact.objects.get(name=n) for n in ("tiny-reward-model", "tiny-causal-lm"))
    assert ModelArtifact.objects.count() == 2 and reward.kind == policy.kind == "base"
    assert AutoModelForSequenceClassification.from_pretrained(artifact_dir(artifact=reward)).config.num_labels == 1
    AutoModelForCausalLM.from_pretrained(artifact_dir(artifact=policy))
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir(artifact=reward))
    assert tokenizer.pad_token is not None and len(tokenizer) <= 300


# ------------------------------------------------------------------ --wait with no worker, --in-process


def test_wait_with_no_worker_says_so_within_seconds_and_queues_nothing(ranked, model_dir, sent):
    """The real broker is asked (no worker of this test run consumes the gpu queue)."""
    import time

    project = ranked[0]
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(model_dir))
    commands = [("train_reward_model", "--project", "ranked", "--base", str(model_dir), "--wait"),
                ("train_policy", "--project", "ranked", "--kind", "dpo", "--policy", str(policy.pk), "--wait")]
    for command in commands:
        started = time.monotonic()
        with pytest.raises(CommandError) as error:
            call_command(*command)
        assert time.monotonic() - started < 10
        message = str(error.value)
        assert "No Celery worker is consuming the 'gpu' queue" in message
        assert "celery -A webapp worker" in message and "--in-process" in message
    assert not TrainingRun.objects.exists() and sent == []


def test_the_worker_check_counts_only_workers_on_the_queue(monkeypatch):
    from training import workers
    from webapp.celery import app

    class Inspect:
        def active_queues(self):
            return {"default@h": [{"name": "default"}], "gpu@h": [{"name": "gpu"}], "mute@h": None}

    monkeypatch.setattr(app.control, "inspect", lambda timeout: Inspect())
    assert workers.workers_consuming(queue="gpu") == ["gpu@h"]
    assert workers.workers_consuming(queue="other") == []


def test_wait_goes_ahead_when_a_worker_consumes_the_queue(ranked, model_dir, sent, monkeypatch):
    from training.management import cli

    monkeypatch.setattr(cli, "workers_consuming", lambda timeout: ["gpu@h"])
    followed = []
    monkeypatch.setattr(cli, "run_follow", lambda run, poll, stdout: followed.append(run.pk))
    call_command("train_reward_model", "--project", "ranked", "--base", str(model_dir), "--wait")
    assert followed == [TrainingRun.objects.get().pk]


@pytest.mark.slow
def test_in_process_trains_the_reward_model_here_without_a_worker(ranked, artifact_root, sent, tmp_path, capsys):
    call_command("build_tiny_models", "--project", "ranked", "--hidden", "32", "--vocab-size", "300")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 4, "max_length": 64, "num_threads": 1}))
    call_command("train_reward_model", "--project", "ranked", "--config", str(config), "--in-process")
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert ModelArtifact.objects.filter(run=run, kind="reward").exists()
    assert f"run {run.pk} succeeded" in capsys.readouterr().out
