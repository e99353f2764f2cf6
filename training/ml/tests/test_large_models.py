"""Large-model settings: bf16 autocast, gradient checkpointing, and LoRA for PPO and GRPO."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.ml import demo_task, precision
from training.ml.config import ConfigError, GRPOConfig, PPOConfig, SFTConfig, config_from_dict
from training.ml.tests.policy_ddp_worker import PROMPTS, TEXTS, vowel_share
from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer
from training.ml.trainers.grpo import train_grpo
from training.ml.trainers.ppo import train_ppo
from training.ml.trainers.sft import train_sft
from training.ml.types import NullHooks


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    tokenizer = build_tokenizer(TEXTS, root / "tok", vocab_size=300)
    return {"sft": str(demo_task.build_demo_base(root / "sft", seed=0)),
            "rl": str(build_tiny_causal_lm(root / "rl", tokenizer, hidden=32, layers=1, heads=2))}


def test_mixed_precision_is_validated_per_device(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.resolve_mixed_precision("auto", cpu) == "no"
    assert precision.resolve_mixed_precision("bf16", cpu) == "bf16"  # torch autocasts to bf16 on any CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(ConfigError, match="mixed_precision: bf16 needs a GPU with bfloat16 support .* Tesla V100"):
        precision.resolve_mixed_precision("bf16", torch.device("cuda", 0))
    assert precision.resolve_mixed_precision("auto", torch.device("cuda", 0)) == "no"
    with pytest.raises(ConfigError, match="mixed_precision: must be one of 'no', 'bf16', 'auto', got 'fp16'"):
        config_from_dict("dpo", {"base_model": "m", "mixed_precision": "fp16"})
    with pytest.raises(ConfigError, match="gradient_checkpointing: must be bool"):
        config_from_dict("grpo", {"base_model": "m", "gradient_checkpointing": "yes"})
    assert config_from_dict("reward", {"base_model": "m"}).mixed_precision == "auto"  # bf16 on a GPU that has it
    assert config_from_dict("ppo", {"base_model": "m", "lora_r": 4}).lora_r == 4


def _sft(base, tmp_path, **extra):
    examples = demo_task.make_demonstrations(96, seed=3)
    hooks = NullHooks()
    config = SFTConfig(base_model=base, max_steps=6, learning_rate=3e-3, batch_size=16, eval_fraction=0.0,
                       num_threads=1, lr_scheduler="constant", **extra)
    train_sft(config, examples, output_dir=tmp_path, hooks=hooks)
    params = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
    return [m["loss"] for _, m in hooks.steps], params


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_model_and_bf16_trains_close_to_it(bases, tmp_path):
    plain_losses, plain = _sft(bases["sft"], tmp_path / "plain")
    ckpt_losses, ckpt = _sft(bases["sft"], tmp_path / "ckpt", gradient_checkpointing=True)
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5)  # recomputed activations, same arithmetic
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-5)
    bf16_losses, _ = _sft(bases["sft"], tmp_path / "bf16", mixed_precision="bf16")
    assert bf16_losses != plain_losses  # the forward really ran in bfloat16 …
    assert bf16_losses == pytest.approx(plain_losses, rel=0.05)  # … and trained the same way
    assert bf16_losses[-1] < bf16_losses[0] - 0.5


@pytest.mark.slow
def test_grpo_with_lora_trains_an_adapter_against_the_base_as_reference(bases, tmp_path):
    hooks = NullHooks()
    config = GRPOConfig(base_model=bases["rl"], max_steps=3, batch_size=3, samples_per_prompt=4, max_new_tokens=6,
                        learning_rate=5e-2, lora_r=4, lora_alpha=8.0, lora_dropout=0.0, checkpoint_every=1000,
                        gradient_checkpointing=True, num_threads=1)
    summary = train_grpo(config, PROMPTS, policy_dir=bases["rl"], output_dir=str(tmp_path), reward_fn=vowel_share,
                         hooks=hooks)
    assert summary["steps"] == 3
    assert hooks.steps[0][1]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the adapter is still zero (B = 0)
    assert hooks.steps[-1][1]["kl"] > 0  # the adapter moved the policy away from the base
    saved = tmp_path / "policy"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == bases["rl"]
    assert not (saved / "model.safetensors").exists()  # only the adapter, not a second copy of the model

    from training.ml.generation import load_policy

    base = AutoModelForCausalLM.from_pretrained(bases["rl"]).state_dict()
    merged = load_policy(bases["rl"], saved)[0].state_dict()  # the adapter merged into its base
    assert any(not torch.equal(base[k], merged[k]) for k in base if k in merged)


@pytest.mark.slow
def test_ppo_with_lora_trains_an_adapter(bases, tmp_path):
    hooks = NullHooks()
    config = PPOConfig(base_model=bases["rl"], max_steps=2, batch_size=3, samples_per_prompt=2, max_new_tokens=6,
                       learning_rate=5e-2, kl_coef=0.01, lora_r=4, lora_dropout=0.0, checkpoint_every=1, num_threads=1)
    summary = train_ppo(config, PROMPTS, policy_dir=bases["rl"], output_dir=str(tmp_path), reward_fn=vowel_share,
                        hooks=hooks)
    assert summary["steps"] == 2 and hooks.steps[0][1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "policy" / "adapter_config.json").exists()
    assert (tmp_path / "checkpoints" / "step-00000001" / "model" / "adapter_config.json").exists()
