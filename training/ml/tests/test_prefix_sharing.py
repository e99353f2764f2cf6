"""Prefix sharing gives the unshared rewards (K = 2, 4, 8, padding, Llama and GPT-2), and trains."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from training.ml.collators import RankedGroupCollator
from training.ml.config import RewardConfig
from training.ml.data import encode_groups
from training.ml.generation import collate_scoring, token_logprobs
from training.ml.prefix_sharing import pack_groups, packed_logprobs, packed_rewards, sharing_error
from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer, synthetic_groups
from training.ml.trainers.reward import score, train_reward_model
from training.ml.types import NullHooks


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [r for g in synthetic_groups(50, 4, seed=1) for r in g.responses]
    return build_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


def llama(tokenizer, tmp_path):
    return AutoModelForSequenceClassification.from_pretrained(build_tiny_reward_model(tmp_path, tokenizer, seed=3))


def gpt2(tokenizer, tmp_path):
    torch.manual_seed(3)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    return AutoModelForSequenceClassification.from_config(config)


def random_groups(k: int, seed: int, pad_id: int, vocab: int) -> list[list[list[int]]]:
    """Groups of k sequences: a shared prompt of 5-30 tokens, replies of 1-12 (so rows and replies pad)."""
    rng = random.Random(seed)
    tokens = [t for t in range(vocab) if t != pad_id]
    groups = []
    for _ in range(3):
        prompt = rng.choices(tokens, k=rng.randint(5, 30))
        groups.append([prompt + rng.choices(tokens, k=rng.randint(1, 12)) for _ in range(k)])
    return groups


@pytest.mark.parametrize("build", [llama, gpt2])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_shared_rewards_equal_the_unshared_ones(tokenizer, tmp_path, build, k):
    model = build(tokenizer, tmp_path).eval()
    groups = random_groups(k, seed=k, pad_id=tokenizer.pad_token_id, vocab=len(tokenizer))
    collate = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id)
    encoded = [type("G", (), {"input_ids": g, "pairs": []})() for g in groups]
    with torch.no_grad():
        plain = score(model, collate(encoded), torch.device("cpu"))  # (N,) one row per response
        shared = packed_rewards(model, pack_groups(groups, tokenizer.pad_token_id), torch.device("cpu"))
    assert shared.shape == plain.shape == (3 * k,)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    # and fewer tokens: one prompt per group instead of k
    assert pack_groups(groups, tokenizer.pad_token_id)["input_ids"].numel() < collate(encoded)["input_ids"].numel()


def test_gradients_equal_the_unshared_ones(tokenizer, tmp_path):
    model = llama(tokenizer, tmp_path)
    groups = random_groups(4, seed=9, pad_id=tokenizer.pad_token_id, vocab=len(tokenizer))
    collate = RankedGroupCollator(pad_token_id=tokenizer.pad_token_id)
    encoded = [type("G", (), {"input_ids": g, "pairs": []})() for g in groups]
    grads = []
    for rewards in (lambda: score(model, collate(encoded), torch.device("cpu")),
                    lambda: packed_rewards(model, pack_groups(groups, tokenizer.pad_token_id), torch.device("cpu"))):
        model.zero_grad()
        (rewards() * torch.arange(12.0)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_a_sequence_without_a_reply_token_of_its_own_still_gets_its_reward(tokenizer, tmp_path):
    model = llama(tokenizer, tmp_path)
    groups = [[[5, 6, 7], [5, 6, 7, 8], [5, 6, 7]]]  # two identical sequences, one a prefix of the other
    assert sharing_error(model, groups, tokenizer.pad_token_id, torch.device("cpu")) < 1e-5


def test_training_with_sharing_changes_parameters_and_lowers_the_loss(tmp_path, tokenizer):
    base = build_tiny_reward_model(tmp_path / "base", tokenizer, seed=0)
    groups = synthetic_groups(120, 4, seed=2)
    config = RewardConfig(base_model=str(base), batch_size=8, epochs=3, learning_rate=3e-3, eval_every=10**6,
                          checkpoint_every=10**6, num_threads=1)
    losses, logs = [], []

    class Hooks(NullHooks):
        def on_step(self, step, total, metrics):
            losses.append(metrics["loss"])

        def log(self, message):
            logs.append(message)

    summary = train_reward_model(config, groups, [], output_dir=tmp_path / "run", hooks=Hooks(), resume=False)
    assert summary["prefix_sharing"] is True, logs
    before = AutoModelForSequenceClassification.from_pretrained(base).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1


def test_encoded_groups_share_the_rendered_prompt(tokenizer):
    encoded, _ = encode_groups(tokenizer, synthetic_groups(3, 4, seed=0), max_length=128)
    packed = pack_groups([g.input_ids for g in encoded], tokenizer.pad_token_id)
    unshared = sum(len(s) for g in encoded for s in g.input_ids)
    assert (packed["segments"] >= 0).sum().item() < unshared  # the chat prompt is encoded once per group


def causal_lm(tokenizer, tmp_path):
    from training.ml.tiny_models import build_tiny_causal_lm

    return AutoModelForCausalLM.from_pretrained(build_tiny_causal_lm(tmp_path, tokenizer, seed=4))


@pytest.mark.parametrize("k", [2, 4, 8])
def test_shared_logprobs_equal_the_unshared_ones(tokenizer, tmp_path, k):
    model = causal_lm(tokenizer, tmp_path).eval()
    rng, tokens = random.Random(k), list(range(4, len(tokenizer)))
    groups = []
    for _ in range(3):  # (prompt ids, response ids): a shared prompt of 5-30 tokens, replies of 1-12
        prompt = rng.choices(tokens, k=rng.randint(5, 30))
        groups.append([(prompt, rng.choices(tokens, k=rng.randint(1, 12))) for _ in range(k)])
    groups.append([([5, 6], [7, 8]), ([5, 6], [7, 8]), ([5, 6], [7])])  # identical replies, one a prefix of another
    flat = [s for g in groups for s in g]
    with torch.no_grad():
        plain = token_logprobs(model, collate_scoring(flat, tokenizer.pad_token_id)).sum(dim=1)  # (N,)
        shared = packed_logprobs(model, groups, tokenizer.pad_token_id, torch.device("cpu"))
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)


def test_dpo_first_step_is_the_same_with_and_without_sharing(tmp_path, tokenizer):
    from training.ml.config import DPOConfig
    from training.ml.trainers.dpo import train_dpo
    from training.ml.tiny_models import build_tiny_causal_lm

    base = build_tiny_causal_lm(tmp_path / "base", tokenizer, seed=0)
    groups = synthetic_groups(16, 4, seed=5)
    steps = []
    for share in (False, True):
        hooks = NullHooks()
        config = DPOConfig(base_model=str(base), batch_size=8, max_steps=4, learning_rate=3e-3, eval_every=10**6,
                           checkpoint_every=10**6, num_threads=1, share_prefix=share, lr_scheduler="constant")
        summary = train_dpo(config, groups, [], output_dir=tmp_path / f"run{share}", hooks=hooks)
        assert summary["prefix_sharing"] is share
        steps.append([m["loss"] for _, m in hooks.steps])
    assert steps[1][0] == pytest.approx(steps[0][0], abs=1e-5)  # same policy, same batch: the same loss
    assert steps[1] == pytest.approx(steps[0], abs=1e-3)  # and the same updates, up to summation order
    assert steps[1][-1] < steps[1][0]


def test_eager_attention_takes_the_additive_mask(tokenizer, tmp_path):
    path = build_tiny_reward_model(tmp_path, tokenizer, seed=3)
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager")
    groups = random_groups(4, seed=11, pad_id=tokenizer.pad_token_id, vocab=len(tokenizer))
    assert sharing_error(model, groups, tokenizer.pad_token_id, torch.device("cpu")) < 1e-5
