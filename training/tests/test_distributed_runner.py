"""A run on several processes: which command the supervisor starts, and a real 2-process reward run (CPU, gloo)."""
import sys

import pytest
from django.core.management import call_command
from django.db import connection

from training import services, supervisor
from training.run_process import child_command
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.artifact_paths import artifact_dir
from training.tests.conftest import rank_all

Status = TrainingRun.Status


def test_one_device_runs_the_plain_child(monkeypatch):
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "1")
    assert child_command(run_id=5, kind="reward") == [sys.executable, "-m", "training.runner", "5"]


def test_several_devices_launch_one_process_each_for_reward_runs(monkeypatch):
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "3")
    command = child_command(run_id=5, kind="reward")
    assert "accelerate.commands.launch" in command and command[command.index("--num_processes") + 1] == "3"
    assert command[-3:] == ["-m", "training.distributed_runner", "5"]


def test_kinds_without_a_data_parallel_trainer_stay_on_one_process(monkeypatch):
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "3")
    monkeypatch.setenv("RLHF_NUM_MACHINES", "2")  # not even across machines
    assert child_command(run_id=5, kind="generate") == [sys.executable, "-m", "training.runner", "5"]


@pytest.mark.parametrize("kind", ["sft", "dpo", "ppo", "grpo"])
def test_policy_kinds_launch_on_every_device_of_every_machine(monkeypatch, kind):
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "2")
    monkeypatch.setenv("RLHF_NUM_MACHINES", "3")
    monkeypatch.setenv("RLHF_MACHINE_RANK", "0")
    monkeypatch.setenv("RLHF_MAIN_PROCESS_IP", "10.0.0.5")
    monkeypatch.setenv("RLHF_MAIN_PROCESS_PORT", "29500")
    command = child_command(run_id=5, kind=kind)
    assert command[command.index("--num_processes") + 1] == "6"
    assert command[command.index("--main_process_ip") + 1] == "10.0.0.5"
    assert command[-3:] == ["-m", "training.distributed_runner", "5"]


def test_a_bad_process_count_is_refused_with_its_name(monkeypatch):
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "many")
    with pytest.raises(ValueError, match="RLHF_NUM_PROCESSES"):
        child_command(run_id=5, kind="reward")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_two_processes_finish_the_run_once(make_user, make_project, tmp_path, monkeypatch, settings, sent):
    from transformers import AutoModelForSequenceClassification

    if connection.vendor != "postgresql":
        pytest.skip("the child processes need the shared PostgreSQL test database")
    monkeypatch.setenv("TEST_PG_NAME", connection.settings_dict["NAME"])
    monkeypatch.setenv("RLHF_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RLHF_NUM_PROCESSES", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings.ARTIFACT_ROOT = tmp_path / "var" / "test-artifacts"
    labeler = make_user("lars")
    project = make_project(slug="ddp", k=4, prompts=12, labelers=[labeler])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", "ddp", "--hidden", "32", "--vocab-size", "300")
    base = ModelArtifact.objects.get(project=project, name="tiny-reward-model")
    config = {"epochs": 2.0, "batch_size": 3, "learning_rate": 3e-3, "eval_every": 2, "checkpoint_every": 2,
              "eval_fraction": 0.25, "max_length": 64}
    run = services.run_create(project=project, kind="reward", config=config, base_artifact=base)
    claimed = services.run_claim(run_id=run.id, worker="test")

    outcome = supervisor.supervise(run_id=run.id, claim_token=claimed.claim_token, attempt=1)

    run.refresh_from_db()
    assert outcome == run.status == Status.SUCCEEDED, run.error + run.log_tail
    assert run.summary["processes"] == 2 and run.step == run.total_steps == 6  # 9 prompts, 3 per step, 2 epochs
    assert run.log_tail.count("succeeded") == 1 and "exited with code" not in run.log_tail
    assert list(MetricPoint.objects.filter(run=run, split="train").values_list("step", flat=True)) == list(range(1, 7))
    artifact = ModelArtifact.objects.get(run=run)  # registered once
    assert AutoModelForSequenceClassification.from_pretrained(artifact_dir(artifact=artifact)).config.num_labels == 1
