"""Sharded parameters (FSDP2) through an operator's accelerate config: 2 processes on CPU over gloo train the
one-process model; the settings and trainers the sharded path does not cover are refused before any work."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from training.ml import demo_task, distributed, sharding
from training.ml.config import ConfigError, DPOConfig, RewardConfig, SFTConfig
from training.ml.tests import policy_ddp_worker as worker
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer, synthetic_groups
from training.ml.trainers import reward as reward_trainer
from training.ml.types import NullHooks

ROOT = Path(__file__).resolve().parents[3]
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
mixed_precision: 'no'
"""
# One process vs two, sharded or not: the same steps in float32, but the gradient of a step is summed in another
# order (each process's share, then reduce-scattered), and AdamW divides by sqrt(v), so coordinates with a tiny
# gradient move by up to ~lr on either side. Measured after 6 steps (max |Δ|, printed under `pytest -s`): SFT 1.8e-5
# and DPO 4.3e-5 against one process; DPO 1.6e-6 against DDP (which sums the same shares). The tolerances keep a
# margin of 5x or more, and are the ones the DDP tests (test_distributed_policy.py) hold against one process.
ONE_PROCESS = {"atol": 2e-4, "rtol": 1e-3}
DDP = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(demo_task.build_demo_base(tmp_path_factory.mktemp("fsdp") / "demo", seed=0))


def _launch(kind: str, base: str, out: Path, *, fsdp: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    config = str(out / "fsdp.yaml") if fsdp else ""
    if fsdp:
        Path(config).write_text(FSDP_CONFIG)
    command = distributed.launch_command(2, ["training.ml.tests.policy_ddp_worker", kind, base, str(out)], cuda=False,
                                         config_file=config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _params(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"params-{name}-rank{rank}.pt", weights_only=True)


def _assert_close(label: str, got: dict, expected: dict, tolerance: dict) -> None:
    """Every parameter within ``tolerance``; prints the largest difference (``pytest -s`` shows the figures)."""
    largest = max((got[k] - v).abs().max().item() for k, v in expected.items())
    print(f"{label}: max |Δ| over {len(expected)} tensors = {largest:.2g}")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **tolerance, msg=name)


def _in_process(kind: str, base: str, out: Path, monkeypatch, hooks=None) -> tuple[dict, dict]:
    """The same training on this one process (resuming from ``out / 'single' / 'checkpoints'`` if any)."""
    from training.ml.trainers import dpo, sft

    for module in (dpo, sft):
        for name in ("checkpoint_save", "load_trainable_policy", "save_policy"):
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    out.mkdir(exist_ok=True)
    seen = worker.instrument(kind, out)
    summary = worker.run(kind, base, out / "single", hooks or NullHooks())
    return summary, {k: v.detach() for k, v in seen["model"].named_parameters() if v.requires_grad}


def _check_sharded_run(out: Path, result: dict, base: str) -> dict:
    """Sharded on both ranks; both gather the same weights, which moved; only the main process wrote; the saved
    policy loads with from_pretrained and holds them; stop-and-resume under FSDP ends bit for bit where the straight
    run does. Returns the straight run's parameters."""
    summary = result["straight"]["summary"]
    assert (summary["processes"], summary["sharded"], summary["steps"]) == (2, True, 6)
    ranks = [json.loads((out / f"ranks-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(0.45 < rank["straight"]["held_share"] < 0.55 for rank in ranks)  # each holds half, not a replica
    rank0, rank1 = _params(out, "straight", 0), _params(out, "straight", 1)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    initial = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0)
    saved = dict(AutoModelForCausalLM.from_pretrained(out / "straight" / "policy").named_parameters())
    assert saved.keys() == rank0.keys() and all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert not (out / "writes-rank1.txt").exists()
    assert (out / "writes-rank0.txt").read_text().splitlines() == [
        "checkpoint straight 3", "policy straight", "checkpoint resumed 3", "checkpoint resumed 4", "policy resumed"]
    assert [s for s, _ in result["resumed"]["steps"][1]] == [5, 6]
    for rank in (0, 1):
        again = _params(out, "resumed", rank)
        assert all(torch.equal(again[k], rank0[k]) for k in rank0)  # the sharded optimizer state came back exactly
    losses = [m["loss"] for _, m in result["straight"]["steps"][0]]
    assert losses[-1] < losses[0]
    return rank0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_sft_trains_the_one_process_model_and_its_checkpoint_resumes_on_one_process(tmp_path, base, monkeypatch):
    result = _launch("sft", base, tmp_path / "fsdp")
    sharded = _check_sharded_run(tmp_path / "fsdp", result, base)

    hooks = NullHooks()
    summary, single = _in_process("sft", base, tmp_path / "one", monkeypatch, hooks)
    assert summary["sharded"] is False
    losses = [m["loss"] for _, m in result["straight"]["steps"][0]]
    assert losses == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-4)  # each step's whole-batch mean
    assert result["straight"]["summary"]["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-4)
    _assert_close("SFT, FSDP vs one process", sharded, single, ONE_PROCESS)

    # The FSDP checkpoint is the one-process one: a plain run resumes from it (step 3) and ends where FSDP did.
    cross = tmp_path / "cross"
    shutil.copytree(tmp_path / "fsdp" / "straight" / "checkpoints", cross / "single" / "checkpoints")
    hooks = NullHooks()
    _, resumed = _in_process("sft", base, cross, monkeypatch, hooks)
    assert [s for s, _ in hooks.steps] == [4, 5, 6]
    _assert_close("SFT, FSDP vs one process resumed from its step-3 checkpoint", sharded, resumed, ONE_PROCESS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_sft_lora_trains_the_one_process_adapter(tmp_path, base, monkeypatch):
    """LoRA under FSDP: the frozen base and the adapter are sharded; the adapter alone is saved and checkpointed."""
    from peft import PeftModel

    out = tmp_path / "fsdp"
    result = _launch("sft_lora", base, out)
    summary = result["straight"]["summary"]
    assert (summary["processes"], summary["sharded"], summary["is_adapter"]) == (2, True, True)
    ranks = [json.loads((out / f"ranks-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(0.45 < rank["straight"]["held_share"] < 0.55 for rank in ranks)
    rank0, rank1 = _params(out, "straight", 0), _params(out, "straight", 1)
    assert rank0.keys() == rank1.keys() and all("lora_" in k for k in rank0)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(torch.equal(_params(out, "resumed", r)[k], rank0[k]) for r in (0, 1) for k in rank0)
    assert (out / "writes-rank0.txt").read_text().splitlines() == [
        "checkpoint straight 3", "policy straight", "checkpoint resumed 3", "checkpoint resumed 4", "policy resumed"]
    assert not (out / "writes-rank1.txt").exists()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "straight" / "policy")
    saved = dict(adapter.named_parameters())
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert any(torch.count_nonzero(v) for k, v in rank0.items() if "lora_B" in k)  # B starts at 0: it trained
    losses = [m["loss"] for _, m in result["straight"]["steps"][0]]
    assert losses[-1] < losses[0]

    hooks = NullHooks()
    _, single = _in_process("sft_lora", base, tmp_path / "one", monkeypatch, hooks)
    assert losses == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-4)
    _assert_close("SFT LoRA, FSDP vs one process", rank0, single, ONE_PROCESS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_dpo_trains_the_one_process_and_the_ddp_model(tmp_path, base, monkeypatch):
    """Against one process within the DDP tests' tolerance; against DDP closer still (FSDP and DDP sum the same
    per-process shares of each step)."""
    result = _launch("dpo", base, tmp_path / "fsdp")
    sharded = _check_sharded_run(tmp_path / "fsdp", result, base)
    steps = result["straight"]["steps"][0]

    hooks = NullHooks()
    summary, single = _in_process("dpo", base, tmp_path / "one", monkeypatch, hooks)
    assert [m["pairs"] for _, m in steps] == [m["pairs"] for _, m in hooks.steps] == [20, 20, 20, 20, 4, 20]
    assert [m["loss"] for _, m in steps] == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-4)
    held = result["straight"]["evals"][0][-1][1]  # 6 held-out prompts, in batches of 5: rank 1 repeats one uncounted
    assert held["pairs"] == hooks.evals[-1][1]["pairs"] == 24
    assert held["loss"] == pytest.approx(hooks.evals[-1][1]["loss"], rel=1e-4)
    _assert_close("DPO, FSDP vs one process", sharded, single, ONE_PROCESS)

    ddp = _launch("dpo", base, tmp_path / "ddp", fsdp=False)
    assert (result["straight"]["summary"]["sharded"], ddp["straight"]["summary"]["sharded"]) == (True, False)
    _assert_close("DPO, FSDP vs DDP", sharded, _params(tmp_path / "ddp", "straight", 0), DDP)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_dpo_early_stopping_keeps_the_one_process_best_weights(tmp_path, base, monkeypatch):
    """The best step's weights are gathered on the main process, travel in its checkpoints and are broadcast back
    to every process's shard at the end: the policy saved is the best step's, as on one process."""
    out = tmp_path / "fsdp"
    result = _launch("dpo_es", base, out)
    summary = result["straight"]["summary"]
    assert (summary["processes"], summary["sharded"], summary["stopped_early"]) == (2, True, True)
    assert summary["steps"] == summary["best_step"] + 2 * 2 < 14
    rank0, rank1 = _params(out, "straight", 0), _params(out, "straight", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = dict(AutoModelForCausalLM.from_pretrained(out / "straight" / "policy").named_parameters())
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert (out / "writes-rank0.txt").read_text().splitlines() == [
        "checkpoint straight 3", "checkpoint straight 6", "checkpoint straight 9", "policy straight",
        "checkpoint resumed 3", "checkpoint resumed 6", "checkpoint resumed 8", "checkpoint resumed 9",
        "policy resumed"]
    again = result["resumed"]["summary"]  # stopped at step 8, after the best step: its weights came from the checkpoint
    assert (again["best_step"], again["steps"]) == (summary["best_step"], summary["steps"])
    assert all(torch.equal(_params(out, "resumed", r)[k], rank0[k]) for r in (0, 1) for k in rank0)

    hooks = NullHooks()
    one, single = _in_process("dpo_es", base, tmp_path / "one", monkeypatch, hooks)
    assert (one["best_step"], one["steps"]) == (summary["best_step"], summary["steps"])
    assert [m["reward_accuracy"] for _, m in hooks.evals] == pytest.approx(
        [m["reward_accuracy"] for _, m in result["straight"]["evals"][0]])
    _assert_close("DPO early stopping, FSDP vs one process", rank0, single, ONE_PROCESS)


@pytest.fixture(scope="module")
def reward_base(tmp_path_factory):
    groups = synthetic_groups(120, 4, seed=0)
    texts = [r for g in groups for r in g.responses] + [g.messages[0]["content"] for g in groups]
    root = tmp_path_factory.mktemp("fsdp_rm")
    tokenizer = build_tokenizer(texts, root / "tok", vocab_size=320)
    return str(build_tiny_reward_model(root / "rm", tokenizer, hidden=32, layers=2, heads=2))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_reward_model_trains_the_one_process_model(tmp_path, reward_base):
    out = tmp_path / "fsdp"
    out.mkdir()
    (out / "fsdp.yaml").write_text(FSDP_CONFIG)
    command = distributed.launch_command(2, ["training.ml.tests.reward_ddp_worker", reward_base, str(out)],
                                         cuda=False, config_file=str(out / "fsdp.yaml"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    summary = result["straight"]["summary"]
    assert (summary["processes"], summary["sharded"], summary["steps"]) == (2, True, 8)
    assert all(0.45 < json.loads((out / f"share-rank{r}.json").read_text()) < 0.55 for r in (0, 1))
    rank0, rank1 = _params(out, "straight", 0), _params(out, "straight", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = AutoModelForSequenceClassification.from_pretrained(out / "straight" / "model").state_dict()
    assert saved.keys() == rank0.keys() and all(torch.equal(saved[k], rank0[k]) for k in saved)
    initial = AutoModelForSequenceClassification.from_pretrained(reward_base, num_labels=1).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in initial)
    assert not (out / "writes-rank1.txt").exists()
    assert (out / "writes-rank0.txt").read_text().splitlines() == [
        "checkpoint straight 3", "checkpoint straight 6", "model straight",
        "checkpoint resumed 3", "checkpoint resumed 4", "checkpoint resumed 6", "model resumed"]
    for rank in (0, 1):
        again = _params(out, "resumed", rank)
        assert all(torch.equal(again[k], rank0[k]) for k in rank0)
    losses = [m["loss"] for _, m in result["straight"]["steps"][0]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert summary["prefix_sharing"] is False  # off under FSDP (its rewards are read through a forward hook)

    from training.ml.tests.reward_ddp_worker import ddp_config, ddp_groups
    from training.ml.trainers.reward import train_reward_model

    train, held_out = ddp_groups()
    hooks, seen = NullHooks(), {}
    real_load = reward_trainer.load_reward_model

    def load_reward_model(config, hooks):
        tokenizer, model = real_load(config, hooks)
        seen["model"] = model
        return tokenizer, model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reward_trainer, "load_reward_model", load_reward_model)
        single = train_reward_model(ddp_config(reward_base), train, held_out, output_dir=tmp_path / "one", hooks=hooks)
    assert single["sharded"] is False
    assert losses == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-3)
    assert summary["final_eval"]["loss"] == pytest.approx(single["final_eval"]["loss"], rel=1e-3)
    _assert_close("reward, FSDP vs one process", rank0, seen["model"].state_dict(), ONE_PROCESS)


# --- refusals: before any work, naming what to change ---
@pytest.mark.parametrize(("variable", "value", "message"), [
    ("FSDP_VERSION", "1", "fsdp_version 1 is not supported"),
    ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params"),
    ("FSDP_RESHARD_AFTER_FORWARD", "false", "fsdp_reshard_after_forward: false"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "gradient_checkpointing"),
    ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true", "set fsdp_cpu_ram_efficient_loading: false"),
    ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "size_based_auto_wrap_policy is not supported"),
])
def test_fsdp_settings_the_trainers_do_not_honour_are_refused(monkeypatch, variable, value, message):
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    assert sharding.settings_from_env() == sharding.ShardSettings()  # what the example config in the docs gives
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message) as raised:
        sharding.settings_from_env()
    assert raised.value.field == "RLHF_ACCELERATE_CONFIG_FILE"


def test_an_fsdp_launch_is_refused_by_the_trainers_that_do_not_shard_even_on_cpu(monkeypatch):
    """accelerate on CPU would quietly run an FSDP file as DDP; the refusal reads the launcher's ACCELERATE_USE_FSDP."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="selects FSDP, which this trainer does not support yet") as raised:
        distributed.make_accelerator()
    assert raised.value.field == "RLHF_ACCELERATE_CONFIG_FILE"
    accelerator = distributed.make_accelerator(shards=True)  # SFT and DPO: one process has nothing to shard
    assert sharding.fsdp_requested(accelerator) and not sharding.is_sharded(accelerator)
    assert sharding.deepspeed_requested(accelerator, env={"ACCELERATE_USE_DEEPSPEED": "true"})


@pytest.mark.parametrize(("config", "field"), [
    (RewardConfig(base_model="m", lora_r=8), "lora_r"),
])
def test_what_the_sharded_trainers_do_not_cover_is_refused(config, field):
    with pytest.raises(ConfigError, match="FSDP") as raised:
        sharding.refuse_unsupported(config, lora=not isinstance(config, RewardConfig))
    assert raised.value.field == field
    sharding.refuse_unsupported(SFTConfig(base_model="m", lora_r=8))  # SFT and DPO train adapters sharded


def test_the_in_run_health_check_is_refused_when_sharded():
    with pytest.raises(ConfigError, match="generates on the main process alone") as raised:
        sharding.refuse_unsupported(SFTConfig(base_model="m", health_every=5), health_watch=object())
    assert raised.value.field == "health_every"
    sharding.refuse_unsupported(SFTConfig(base_model="m", health_every=5))  # no watch given: no check runs


def test_sharded_evaluation_runs_as_many_forwards_on_every_process():
    for n_items, batch, world in ((6, 5, 2), (1, 4, 3), (10, 2, 2), (7, 1, 4)):
        shares = [sharding.even_batches(n_items, batch, rank=r, world=world, sharded=True) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # the same number of forwards everywhere
        counted = sorted(start for s in shares for start, counted in s if counted)
        assert counted == list(range(0, n_items, batch))  # each batch counted once
        plain = [sharding.even_batches(n_items, batch, rank=r, world=world, sharded=False) for r in range(world)]
        assert sorted(start for s in plain for start, _ in s) == counted
