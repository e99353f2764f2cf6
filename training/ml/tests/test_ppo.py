"""PPO: the clipped losses on hand-computed tensors, then the trainer on a tiny random policy."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.ml.config import ConfigError, PPOConfig, config_from_dict
from training.ml.losses import ppo_policy_loss, ppo_value_loss
from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer
from training.ml.trainers.ppo import ptx_loss, train_ppo
from training.ml.types import NullHooks

PROMPTS = [[{"role": "user", "content": w}] for w in ("the cat", "a dog", "count", "apples please", "the park", "sat on")]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "count the apples please", "a tall tree by a river"] * 20


def vowel_share(prompt_messages, response_text: str) -> float:
    """Toy reward: share of the response's characters that are vowels."""
    return sum(c in "aeiou" for c in response_text) / max(len(response_text), 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_ppo")
    tokenizer = build_tokenizer(TEXTS, root / "tok", vocab_size=300)
    build_tiny_causal_lm(root / "policy", tokenizer, hidden=32, layers=1, heads=2)
    other = build_tokenizer(TEXTS[:40], root / "tok2", vocab_size=280)  # a different vocabulary
    build_tiny_reward_model(root / "rm_other_tok", other, hidden=32, layers=1, heads=2)
    build_tiny_reward_model(root / "rm_same_tok", tokenizer, hidden=32, layers=1, heads=2)
    return root


def _config(tiny, **overrides) -> PPOConfig:
    values = dict(base_model=str(tiny / "policy"), max_steps=4, batch_size=6, samples_per_prompt=4, max_new_tokens=6,
                  learning_rate=1e-2, kl_coef=0.01, checkpoint_every=1000, seed=0)
    values.update(overrides)
    return PPOConfig(**values)


def _params(model_dir):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def test_ppo_policy_loss_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5)], [0.0, 0.0]])  # ratios 1.5, 0.5, 1, (pad)
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, 1.0], [-2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, ratio = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # min(1.5·1, 1.2·1) = 1.2; min(0.5·1, 0.8·1) = 0.5; min(1·-2, 1·-2) = -2  -> -(1.2 + 0.5 - 2)/3
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.0) / 3)
    torch.testing.assert_close(ratio, torch.tensor([[1.5, 0.5], [1.0, 1.0]]))
    # gradient flows only through unclipped terms: the 1.5 ratio with A>0 is clipped
    logp = logp.clone().requires_grad_(True)
    ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)[0].backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() != 0.0 and logp.grad[1, 1].item() == 0.0


def test_ppo_value_loss_takes_the_pessimistic_clipped_error():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.5)
    # token 0: unclipped (1-2)² = 1, clipped V=0.5 -> (0.5-2)² = 2.25 -> 2.25; token 1: 1 and 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)


def test_ppo_config_is_validated():
    with pytest.raises(ConfigError, match="kl_estimator"):
        config_from_dict("ppo", {"base_model": "m", "kl_estimator": "k7"})
    with pytest.raises(ConfigError, match="value_model"):
        config_from_dict("ppo", {"base_model": "m", "value_model": "tree"})
    assert config_from_dict("ppo", {"base_model": "m", "ptx_coef": 0.5}).ptx_coef == 0.5


@pytest.mark.slow
def test_ppo_raises_mean_reward_and_changes_parameters(tiny, tmp_path):
    hooks = NullHooks()
    summary = train_ppo(_config(tiny, max_steps=16), PROMPTS, policy_dir=str(tiny / "policy"),
                        output_dir=str(tmp_path), reward_fn=vowel_share, hooks=hooks)
    rewards = [m["reward"] for _, m in hooks.steps]
    assert len(rewards) == 16 and summary["policy_dir"] == str(tmp_path / "policy")
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards
    for key in ("kl", "entropy", "value_loss", "clip_fraction", "policy_loss", "kl_coef"):
        assert all(math.isfinite(m[key]) for _, m in hooks.steps), key
    before, after = _params(tiny / "policy"), _params(tmp_path / "policy")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_ppo_with_reward_model_on_another_tokenizer_and_adaptive_kl(tiny, tmp_path):
    hooks = NullHooks()
    train_ppo(_config(tiny, max_steps=2, adaptive_kl=True, kl_target=0.01, kl_horizon=10), PROMPTS,
              policy_dir=str(tiny / "policy"), output_dir=str(tmp_path), reward_model_dir=str(tiny / "rm_other_tok"),
              hooks=hooks)
    first, second = hooks.steps[0][1], hooks.steps[1][1]
    assert "rm_score" in first and math.isfinite(first["rm_score"])
    assert second["kl_coef"] != first["kl_coef"]  # β adapted after step 1


@pytest.mark.slow
def test_ppo_critic_from_reward_model_needs_the_same_tokenizer(tiny, tmp_path):
    with pytest.raises(ValueError, match="share the policy's tokenizer"):
        train_ppo(_config(tiny, value_model="reward_model"), PROMPTS, policy_dir=str(tiny / "policy"),
                  output_dir=str(tmp_path), reward_model_dir=str(tiny / "rm_other_tok"))
    hooks = NullHooks()
    train_ppo(_config(tiny, value_model="reward_model", max_steps=1), PROMPTS, policy_dir=str(tiny / "policy"),
              output_dir=str(tmp_path), reward_model_dir=str(tiny / "rm_same_tok"), hooks=hooks)
    assert math.isfinite(hooks.steps[0][1]["value_loss"])


@pytest.mark.slow
def test_ppo_ptx_adds_the_language_modelling_term(tiny, tmp_path):
    ptx = ["the cat sat on the mat", "a dog ran in the park"]
    runs = {}
    for coef in (0.0, 1.0):
        hooks = NullHooks()
        train_ppo(_config(tiny, max_steps=3, ptx_coef=coef), PROMPTS, policy_dir=str(tiny / "policy"),
                  output_dir=str(tmp_path / f"ptx{coef}"), reward_fn=vowel_share, hooks=hooks, ptx_texts=ptx)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"ptx{coef}" / "policy")
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / f"ptx{coef}" / "policy")
        with torch.no_grad():
            runs[coef] = (ptx_loss(model, tokenizer, ptx, 64).item(), hooks.steps[-1][1])
    assert "ptx_loss" in runs[1.0][1] and "ptx_loss" not in runs[0.0][1]
    assert runs[1.0][0] < runs[0.0][0] - 0.1  # γ > 0 fits the ptx texts better
    with pytest.raises(ValueError, match="ptx_texts"):
        train_ppo(_config(tiny, ptx_coef=1.0), PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path),
                  reward_fn=vowel_share)


class StopAfter(NullHooks):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def should_stop(self) -> bool:
        return len(self.steps) >= self.n


@pytest.mark.slow
def test_ppo_resumes_from_its_checkpoint_exactly(tiny, tmp_path):
    config = _config(tiny, max_steps=4)
    straight = train_ppo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "a"),
                         reward_fn=vowel_share)
    stopped = train_ppo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "b"),
                        reward_fn=vowel_share, hooks=StopAfter(2))
    assert stopped["stopped"] and stopped["steps"] == 2 and stopped["policy_dir"] is None
    hooks = NullHooks()
    resumed = train_ppo(config, PROMPTS, policy_dir=str(tiny / "policy"), output_dir=str(tmp_path / "b"),
                        reward_fn=vowel_share, hooks=hooks)
    assert [s for s, _ in hooks.steps] == [3, 4] and "resumed from step-00000002" in hooks.messages[0]
    assert resumed["final"]["reward"] == pytest.approx(straight["final"]["reward"])
    a, b = _params(tmp_path / "a" / "policy"), _params(tmp_path / "b" / "policy")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
