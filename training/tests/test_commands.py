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
    assert run.kind == "dpo" and run.config["base_model"] == str(stored_model) and run.base_artifact == policy
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

    from training.selectors import artifact_dir

    for _ in range(2):  # idempotent: the second build updates the same rows
        call_command("build_tiny_models", "--project", "ranked", "--hidden", "32", "--vocab-size", "300")
    reward, policy = (ModelArtifact.objects.get(name=n) for n in ("tiny-reward-model", "tiny-causal-lm"))
    assert ModelArtifact.objects.count() == 2 and reward.kind == policy.kind == "base"
    assert AutoModelForSequenceClassification.from_pretrained(artifact_dir(artifact=reward)).config.num_labels == 1
    AutoModelForCausalLM.from_pretrained(artifact_dir(artifact=policy))
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir(artifact=reward))
    assert tokenizer.pad_token is not None and len(tokenizer) <= 300
