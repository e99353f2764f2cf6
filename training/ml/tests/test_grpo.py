"""GRPO: the loss on hand-computed tensors, then the trainer on a tiny random policy."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.ml.config import ConfigError, GRPOConfig, config_from_dict
from training.ml.losses import grpo_loss
from training.ml.tests.test_ppo import PROMPTS, TEXTS, StopAfter, vowel_share
from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer
from training.ml.trainers.grpo import train_grpo
from training.ml.types import NullHooks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_grpo")
    tokenizer = build_tokenizer(TEXTS, root / "tok", vocab_size=300)
    build_tiny_causal_lm(root / "policy", tokenizer, hidden=32, layers=1, heads=2)
    other = build_tokenizer(TEXTS[:40], root / "tok2", vocab_size=280)
    build_tiny_reward_model(root / "rm", other, hidden=32, layers=1, heads=2)
    return root


def _config(tiny, **overrides) -> GRPOConfig:
    values = dict(base_model=str(tiny / "policy"), max_steps=4, batch_size=6, samples_per_prompt=4, max_new_tokens=6,
                  learning_rate=3e-2, checkpoint_every=1000, seed=0)
    values.update(overrides)
    return GRPOConfig(**values)


def _params(model_dir):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def test_grpo_loss_by_hand():
    logp = torch.tensor([[math.log(1.5), 0.0], [0.0, 0.0]])  # ratios 1.5, 1 | 1, (pad)
    old = torch.zeros(2, 2)
    ref = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])  # π_ref/π = 1/1.5, 2 | 1
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, ratio, kl = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1)
    k3 = lambda r: r - math.log(r) - 1  # noqa: E731  eq. 4 with r = π_ref/π
    seq0 = ((1.2 - 0.1 * k3(1 / 1.5)) + (1.0 - 0.1 * k3(2.0))) / 2  # min(1.5, 1.2)·1, min(1, 1)·1
    seq1 = -1.0 - 0.1 * k3(1.0)
    assert loss.item() == pytest.approx(-(seq0 + seq1) / 2, abs=1e-6)
    assert kl[0].tolist() == pytest.approx([k3(1 / 1.5), k3(2.0)], abs=1e-6)
    token_mean, _, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1, per_sequence=False)
    assert token_mean.item() == pytest.approx(-(seq0 * 2 + seq1) / 3, abs=1e-6)


def test_grpo_config_is_validated():
    with pytest.raises(ConfigError, match="samples_per_prompt: must be >= 2"):
        config_from_dict("grpo", {"base_model": "m", "samples_per_prompt": 1})
    with pytest.raises(ConfigError, match="loss_aggregation"):
        config_from_dict("grpo", {"base_model": "m", "loss_aggregation": "mean"})


@pytest.mark.slow
def test_grpo_raises_mean_reward_and_changes_parameters(tiny, tmp_path):
    hooks = NullHooks()
    summary = train_grpo(_config(tiny, max_steps=12), PROMPTS, policy_dir=str(tiny / "policy"),
                         output_dir=str(tmp_path), reward_fn=vowel_share, hooks=hooks)
    rewards = [m["reward"] for _, m in hooks.steps]
    assert summary["steps"] == 12 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.08, rewards
    for key in ("kl", "entropy", "clip_fraction", "policy_loss", "reward_group_std"):
        assert all(math.isfinite(m[key]) for _, m in hooks.steps), key
    assert hooks.steps[-1][1]["kl"] > 0  # moved away from the reference
    before, after = _params(tiny / "policy"), _params(tmp_path / "policy")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_grpo_several_iterations_clip_and_reward_model_scores(tiny, tmp_path):
    hooks = NullHooks()
    train_grpo(_config(tiny, max_steps=2, num_iterations=3, mini_batch_size=8, beta=0.0), PROMPTS,
               policy_dir=str(tiny / "policy"), output_dir=str(tmp_path), reward_fn=vowel_share,
               reward_model_dir=str(tiny / "rm"), hooks=hooks)
    metrics = hooks.steps[-1][1]
    assert metrics["clip_fraction"] > 0  # later minibatches are off-policy, so some ratios leave the band
    assert metrics["reward"] == pytest.approx(metrics["rm_score"] + metrics["fn_score"], abs=1e-5)


@pytest.mark.slow
def test_grpo_resumes_from_its_checkpoint_exactly(tiny, tmp_path):
    config = _config(tiny, max_steps=4)
    straight = train_grpo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "a"),
                          reward_fn=vowel_share)
    stopped = train_grpo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "b"),
                         reward_fn=vowel_share, hooks=StopAfter(2))
    assert stopped["stopped"] and stopped["steps"] == 2
    hooks = NullHooks()
    resumed = train_grpo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "b"),
                         reward_fn=vowel_share, hooks=hooks)
    assert [s for s, _ in hooks.steps] == [3, 4]
    assert resumed["final"]["reward"] == pytest.approx(straight["final"]["reward"])
    a, b = _params(tmp_path / "a" / "policy"), _params(tmp_path / "b" / "policy")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_grpo_rejects_a_bad_reward(tiny, tmp_path):
    with pytest.raises(ValueError, match="expected a finite number"):
        train_grpo(_config(tiny, max_steps=1), PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path),
                   reward_fn=lambda p, r: float("nan"))
    with pytest.raises(ValueError, match="a reward is required"):
        train_grpo(_config(tiny, max_steps=1), PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path))
    assert not (tmp_path / "policy").exists()
