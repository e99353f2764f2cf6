"""SFT, DPO, GRPO and PPO data-parallel: 2 processes (gloo on CPU, accelerate launch) train the one-process model."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from training.ml import demo_task, distributed
from training.ml.tests import policy_ddp_worker as worker
from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer
from training.ml.types import NullHooks

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_policy")
    tokenizer = build_tokenizer(worker.TEXTS, root / "tok", vocab_size=300)
    demo = str(demo_task.build_demo_base(root / "dpo", seed=0))
    rl = str(build_tiny_causal_lm(root / "grpo", tokenizer, hidden=32, layers=1, heads=2))
    build_tiny_reward_model(root / "rm", tokenizer, hidden=32, layers=1, heads=2)  # PPO's scorer and critic
    return {"dpo": demo, "sft": demo, "dpo_es": demo, "grpo": rl, "ppo": rl}


def _launch(kind: str, base: str, out: Path) -> dict:
    command = distributed.launch_command(2, ["training.ml.tests.policy_ddp_worker", kind, base, str(out)], cuda=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _params(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"params-{name}-rank{rank}.pt", weights_only=True)


def _single_run(kind: str, base: str, out: Path, monkeypatch):
    """The same training on one process (this one), keeping the trained parameters."""
    from training.ml.trainers import dpo, grpo, ppo, sft

    for module, name in ((dpo, "checkpoint_save"), (dpo, "load_trainable_policy"), (dpo, "save_policy"),
                         (sft, "checkpoint_save"), (sft, "load_trainable_policy"), (sft, "save_policy"),
                         (grpo, "checkpoint_save"), (grpo, "load_rl_policy"),
                         (ppo, "checkpoint_save"), (ppo, "load_ppo_models")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    out.mkdir()
    seen = worker.instrument(kind, out)
    hooks = NullHooks()
    summary = worker.run(kind, base, out / "single", hooks)
    return summary, hooks, {k: v.detach() for k, v in seen["model"].named_parameters() if v.requires_grad}


def _check_common(out: Path, result: dict, initial_changed) -> dict:
    """Both ranks hold the same weights; only the main process wrote; stop-and-resume gives the same weights."""
    rank0, rank1 = _params(out, "straight", 0), _params(out, "straight", 1)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert initial_changed(rank0)
    assert not (out / "writes-rank1.txt").exists()
    writes = (out / "writes-rank0.txt").read_text().splitlines()
    assert writes == ["checkpoint straight 3", "policy straight",
                      "checkpoint resumed 3", "checkpoint resumed 4", "policy resumed"]
    assert (out / "straight" / "policy" / "config.json").exists()
    resumed = result["resumed"]
    assert [s for s, _ in resumed["steps"][1]] == [5, 6]
    for rank in (0, 1):
        again = _params(out, "resumed", rank)
        assert all(torch.equal(again[k], rank0[k]) for k in rank0)  # bitwise, as on one process
    # Progress is reported once: only the main process's hooks see the steps; the stop that only the main
    # process's hooks ask for (rank 1's trainer ignores its own) stops rank 1 at the same step.
    ranks = [json.loads((out / f"ranks-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["straight"]["hook_steps"] == [6] and ranks[0]["resumed"]["hook_steps"] == [4, 2]
    assert ranks[1]["straight"]["hook_steps"] == [0] and ranks[1]["resumed"]["hook_steps"] == [0, 0]
    for rank in ranks:
        first, second = rank["resumed"]["summaries"]
        assert (first["stopped"], first["steps"], second["stopped"], second["steps"]) == (True, 4, False, 6)
    return rank0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_dpo_trains_the_one_process_model(tmp_path, bases, monkeypatch):
    result = _launch("dpo", bases["dpo"], tmp_path)
    straight = result["straight"]
    assert straight["summary"]["processes"] == 2 and straight["summary"]["steps"] == 6

    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(bases["dpo"]).named_parameters())
    rank0 = _check_common(tmp_path, result, lambda p: any(not torch.equal(initial[k], p[k]) for k in p))

    summary, hooks, single = _single_run("dpo", bases["dpo"], tmp_path / "one", monkeypatch)
    assert summary["processes"] == 1
    steps = straight["steps"][0]
    assert [m["pairs"] for _, m in steps] == [m["pairs"] for _, m in hooks.steps] == [20, 20, 20, 20, 4, 20]
    losses = [m["loss"] for _, m in steps]
    assert losses == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-4)  # each step's whole-batch loss
    assert [m["reward_accuracy"] for _, m in steps] == pytest.approx([m["reward_accuracy"] for _, m in hooks.steps])
    assert losses[-1] < losses[0]
    held = straight["evals"][0][-1][1]
    assert held["pairs"] == hooks.evals[-1][1]["pairs"] == 24
    assert held["loss"] == pytest.approx(hooks.evals[-1][1]["loss"], rel=1e-4)
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-4, rtol=1e-3, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_grpo_trains_the_one_process_model(tmp_path, bases, monkeypatch):
    result = _launch("grpo", bases["grpo"], tmp_path)
    straight = result["straight"]
    assert straight["summary"]["processes"] == 2 and straight["summary"]["steps"] == 6

    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(bases["grpo"]).named_parameters())
    rank0 = _check_common(tmp_path, result, lambda p: any(not torch.equal(initial[k], p[k]) for k in p))

    summary, hooks, single = _single_run("grpo", bases["grpo"], tmp_path / "one", monkeypatch)
    assert summary["processes"] == 1
    steps = [m for _, m in straight["steps"][0]]
    one = [m for _, m in hooks.steps]
    # The same samples (seeded per prompt), so the same rewards; the same loss on the whole batch.
    assert [m["reward"] for m in steps] == pytest.approx([m["reward"] for m in one], abs=1e-6)
    assert [m["response_length"] for m in steps] == pytest.approx([m["response_length"] for m in one])
    assert [m["policy_loss"] for m in steps] == pytest.approx([m["policy_loss"] for m in one], rel=1e-3, abs=1e-5)
    assert [m["kl"] for m in steps] == pytest.approx([m["kl"] for m in one], rel=1e-3, abs=1e-6)
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-4, rtol=1e-3, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_sft_trains_the_one_process_model(tmp_path, bases, monkeypatch):
    result = _launch("sft", bases["sft"], tmp_path)
    straight = result["straight"]
    assert straight["summary"]["processes"] == 2 and straight["summary"]["steps"] == 6

    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(bases["sft"]).named_parameters())
    rank0 = _check_common(tmp_path, result, lambda p: any(not torch.equal(initial[k], p[k]) for k in p))

    summary, hooks, single = _single_run("sft", bases["sft"], tmp_path / "one", monkeypatch)
    assert summary["processes"] == 1
    losses = [m["loss"] for _, m in straight["steps"][0]]
    assert losses == pytest.approx([m["loss"] for _, m in hooks.steps], rel=1e-4)  # the whole step's token mean
    assert losses[-1] < losses[0]
    assert straight["summary"]["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-4)
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-4, rtol=1e-3, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_dpo_early_stopping_takes_one_decision_and_keeps_the_best(tmp_path, bases, monkeypatch):
    """Early stopping under DDP: every process stops at the same step, holds the best step's weights, and only
    the main one writes; a stop signal after the best step resumes to the same end; as on one process."""
    result = _launch("dpo_es", bases["dpo_es"], tmp_path)
    straight, resumed = result["straight"], result["resumed"]
    summary = straight["summary"]
    assert summary["processes"] == 2 and summary["stopped_early"]
    assert summary["steps"] == summary["best_step"] + 2 * 2 < 14 and summary["best_step"] < 8
    rank0, rank1 = _params(tmp_path, "straight", 0), _params(tmp_path, "straight", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert not (tmp_path / "writes-rank1.txt").exists()
    writes = (tmp_path / "writes-rank0.txt").read_text().splitlines()
    assert writes == ["checkpoint straight 3", "checkpoint straight 6", "checkpoint straight 9", "policy straight",
                      "checkpoint resumed 3", "checkpoint resumed 6", "checkpoint resumed 8",
                      "checkpoint resumed 9", "policy resumed"]
    again = resumed["summary"]
    assert (again["best_step"], again["steps"], again["best_eval_accuracy"]) == (
        summary["best_step"], summary["steps"], summary["best_eval_accuracy"])
    for rank in (0, 1):
        assert all(torch.equal(_params(tmp_path, "resumed", rank)[k], rank0[k]) for k in rank0)
    one, hooks, single = _single_run("dpo_es", bases["dpo_es"], tmp_path / "one", monkeypatch)
    assert (one["processes"], one["best_step"], one["steps"]) == (1, summary["best_step"], summary["steps"])
    assert [m["reward_accuracy"] for _, m in hooks.evals] == pytest.approx(
        [m["reward_accuracy"] for _, m in straight["evals"][0]])
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-4, rtol=1e-3, msg=name)


def _ppo_value_module_changed(initial_policy):
    def changed(params) -> bool:
        policy = {k.removeprefix("policy."): v for k, v in params.items() if k.startswith("policy.")}
        assert policy.keys() == {k for k, v in initial_policy.items() if v.requires_grad}
        assert any(k.startswith("value.") for k in params)  # the value head (or critic) is trained and kept too
        return any(not torch.equal(initial_policy[k], v) for k, v in policy.items())
    return changed


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["ppo", "ppo_critic"])
def test_two_process_ppo_trains_the_one_process_model(tmp_path, bases, monkeypatch, kind):
    """Rollouts seeded per prompt, GAE and whitening over the whole batch, the same β, DDP over the policy and
    its value head (or the critic initialised from the reward model), PPO-ptx: the one-process run."""
    result = _launch(kind, bases["ppo"], tmp_path)
    straight = result["straight"]
    assert straight["summary"]["processes"] == 2 and straight["summary"]["steps"] == 6

    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(bases["ppo"]).named_parameters())
    rank0 = _check_common(tmp_path, result, _ppo_value_module_changed(initial))
    rank1_final = json.loads((tmp_path / "ranks-rank1.json").read_text())["straight"]["summaries"][0]["final"]
    assert rank1_final == straight["summary"]["final"]  # the whole batch's figures on every process

    summary, hooks, single = _single_run(kind, bases["ppo"], tmp_path / "one", monkeypatch)
    assert summary["processes"] == 1
    steps = [m for _, m in straight["steps"][0]]
    one = [m for _, m in hooks.steps]
    # The same samples (seeded per prompt), so the same rewards and lengths; the same losses and KL over the
    # whole batch; β adapted from the whole batch's KL.
    assert [m["fn_score"] for m in steps] == pytest.approx([m["fn_score"] for m in one], abs=1e-6)
    assert [m["response_length"] for m in steps] == pytest.approx([m["response_length"] for m in one])
    for key in ("reward", "rm_score", "kl", "kl_coef", "policy_loss", "value_loss", "entropy", "ptx_loss"):
        assert [m[key] for m in steps] == pytest.approx([m[key] for m in one], rel=1e-3, abs=1e-5), key
    assert len({m["kl_coef"] for m in one}) > 1  # β did adapt
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-4, rtol=1e-3, msg=name)
