"""Data parallelism: the launch command, the sharding, and a real 2-process run (gloo on CPU, accelerate launch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from training.ml import distributed
from training.ml.tests.reward_ddp_worker import ddp_config, ddp_groups
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer, synthetic_groups
from training.ml.trainers.reward import train_reward_model
from training.ml.types import NullHooks

ROOT = Path(__file__).resolve().parents[3]


def test_one_process_is_the_plain_module_command():
    assert distributed.launch_command(1, ["training.runner", "7"]) == [sys.executable, "-m", "training.runner", "7"]


def test_several_processes_go_through_accelerate_launch():
    command = distributed.launch_command(4, ["training.runner", "7"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--main_process_port") + 1] == "0"  # a free port: runs can share a machine
    assert command[-3:] == ["-m", "training.runner", "7"]
    cpu = distributed.launch_command(2, ["m"], cuda=False)
    assert cpu[:2] == ["env", "ACCELERATE_USE_CPU=true"] and cpu[2:] == distributed.launch_command(2, ["m"])


def test_several_machines_meet_at_machine_zero():
    env = {"RLHF_NUM_MACHINES": "2", "RLHF_MACHINE_RANK": "1", "RLHF_MAIN_PROCESS_IP": "10.0.0.5",
           "RLHF_MAIN_PROCESS_PORT": "29500"}
    rendezvous = distributed.rendezvous_from_env(env)
    command = distributed.launch_command(4, ["training.runner", "7"], rendezvous=rendezvous)
    after = lambda flag: command[command.index(flag) + 1]  # noqa: E731
    assert after("--num_processes") == "8"  # accelerate counts the processes of all machines
    assert (after("--num_machines"), after("--machine_rank")) == ("2", "1")
    assert (after("--main_process_ip"), after("--main_process_port")) == ("10.0.0.5", "29500")
    # One device per machine on two machines is still a launch (the other machine waits for this one).
    assert "accelerate.commands.launch" in distributed.launch_command(1, ["m"], rendezvous=rendezvous)
    assert distributed.rendezvous_from_env({}) == distributed.Rendezvous()
    with pytest.raises(ValueError, match="needs RLHF_MAIN_PROCESS_IP and RLHF_MAIN_PROCESS_PORT"):
        distributed.rendezvous_from_env({"RLHF_NUM_MACHINES": "2"})
    with pytest.raises(ValueError, match="RLHF_MACHINE_RANK must be a whole number in \\[0, 1\\]"):
        distributed.rendezvous_from_env({**env, "RLHF_MACHINE_RANK": "2"})


def test_an_operator_accelerate_config_file_chooses_the_distributed_type(tmp_path, monkeypatch):
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    command = distributed.launch_command(2, ["m"], config_file=distributed.accelerate_config_file(
        {"RLHF_ACCELERATE_CONFIG_FILE": str(config)}))
    assert command[command.index("--config_file") + 1] == str(config)
    assert "--multi_gpu" not in command and "--mixed_precision" not in command  # the file says
    assert command[command.index("--num_processes") + 1] == "2"
    with pytest.raises(ValueError, match="is not a file"):
        distributed.accelerate_config_file({"RLHF_ACCELERATE_CONFIG_FILE": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize("bad", [0, -1])
def test_launch_command_rejects_no_processes(bad):
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        distributed.launch_command(bad, ["m"])


def test_num_processes_from_env_or_devices():
    assert distributed.num_processes(env={}, device_count=0) == 1
    assert distributed.num_processes(env={}, device_count=8) == 8
    assert distributed.num_processes(env={"RLHF_NUM_PROCESSES": "2"}, device_count=8) == 2
    with pytest.raises(ValueError, match="RLHF_NUM_PROCESSES must be a whole number >= 1, got 'two'"):
        distributed.num_processes(env={"RLHF_NUM_PROCESSES": "two"}, device_count=8)
    with pytest.raises(ValueError, match="got '0'"):
        distributed.num_processes(env={"RLHF_NUM_PROCESSES": "0"})


def test_shards_cover_each_step_once_and_pad_empty_processes():
    indices = [7, 3, 9, 1, 4]
    shards = [distributed.shard(indices, rank=r, world=3) for r in range(3)]
    assert sorted(i for s, padding in shards for i in s) == sorted(indices)
    assert not any(padding for _, padding in shards)
    assert distributed.shard([5, 6], rank=2, world=3) == ([5], True)  # runs forward/backward with loss × 0


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    groups = synthetic_groups(120, 4, seed=0)
    texts = [r for g in groups for r in g.responses] + [g.messages[0]["content"] for g in groups]
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer(texts, root / "tok", vocab_size=320)
    return str(build_tiny_reward_model(root / "rm", tokenizer, hidden=32, layers=1, heads=2))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_processes_train_one_model(tmp_path, base_model):
    command = distributed.launch_command(
        2, ["training.ml.tests.reward_ddp_worker", base_model, str(tmp_path)], cuda=False
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    straight = result["straight"]
    assert straight["summary"]["processes"] == 2 and straight["summary"]["steps"] == 8

    # Both processes hold the same model, the main process saved it, and transformers loads it.
    rank0 = torch.load(tmp_path / "params-straight-rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "params-straight-rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "straight" / "model").state_dict()
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    initial = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in initial if k in rank0)

    # Only the main process wrote checkpoints and models, each once.
    writes = (tmp_path / "writes-rank0.txt").read_text().splitlines()
    assert not (tmp_path / "writes-rank1.txt").exists()
    assert writes == ["checkpoint straight 3", "checkpoint straight 6", "model straight",
                      "checkpoint resumed 3", "checkpoint resumed 4", "checkpoint resumed 6", "model resumed"]

    # The hooks heard every step once, the loss fell, and the 2-process losses are the 1-process ones:
    # each process scales its share so that the synced gradient is the gradient of the whole batch.
    steps = straight["steps"][0]
    assert [s for s, _ in steps] == list(range(1, 9))
    losses = [m["loss"] for _, m in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    train, held_out = ddp_groups()
    hooks = NullHooks()
    single = train_reward_model(ddp_config(base_model), train, held_out, output_dir=tmp_path / "single", hooks=hooks)
    assert single["processes"] == 1
    assert [m["pairs"] for _, m in hooks.steps] == [m["pairs"] for _, m in steps]
    assert [m["loss"] for _, m in hooks.steps] == pytest.approx(losses, rel=1e-3)
    assert losses[0] == pytest.approx(hooks.steps[0][1]["loss"], rel=1e-5)
    held = straight["summary"]["final_eval"]
    assert held["pairs"] == single["final_eval"]["pairs"]
    assert held["accuracy"] == pytest.approx(single["final_eval"]["accuracy"], abs=0.05)

    # Stopped after step 4 and resumed: the same final weights as the straight run, on both processes.
    resumed = result["resumed"]
    assert resumed["summary"]["steps"] == 8 and [s for s, _ in resumed["steps"][1]] == [5, 6, 7, 8]
    for rank in (0, 1):
        again = torch.load(tmp_path / f"params-resumed-rank{rank}.pt", weights_only=True)
        assert all(torch.equal(again[k], rank0[k]) for k in rank0)  # bitwise, as on one process
