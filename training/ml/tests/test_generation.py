"""Sampling K responses with log-probs, and scoring responses under a policy."""
import math

import pytest
import torch

from training.ml import demo_task
from training.ml.generation import (
    collate_scoring, generate_samples, load_policy, mean_token_nll, sequence_logprobs,
)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    base = demo_task.build_demo_base(tmp_path_factory.mktemp("gen"), seed=0)
    return str(base), *load_policy(base)


def test_collate_scoring_right_pads_and_masks_the_response():
    batch = collate_scoring([([5, 6], [7, 2]), ([5], [2])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


def test_generate_returns_k_samples_whose_logprobs_match_a_recomputation(tiny_policy):
    model_dir, model, tokenizer = tiny_policy
    prompts = [demo_task.demo_prompt("river"), demo_task.demo_prompt("harbor"), demo_task.demo_prompt("hill")]
    out = generate_samples(model_dir, prompts, k=3, max_new_tokens=8, seed=1, batch_size=2)
    assert [len(group) for group in out] == [3, 3, 3]
    for messages, group in zip(prompts, out):
        assert len({s.text for s in group}) == 3  # a random model is diverse enough for distinct samples
        for s in group:
            assert 1 <= s.num_tokens <= 8
            if not s.ended_with_eos:
                assert s.num_tokens == 8  # cut at max_new_tokens
            assert "</s>" not in s.text and "<pad>" not in s.text
        again = sequence_logprobs(model, tokenizer, [messages] * 3, [s.text for s in group])
        assert again.tolist() == pytest.approx([s.logprob for s in group], abs=1e-3)
        assert all(s.logprob < 0 for s in group)


def test_generation_is_reproducible_for_a_seed(tiny_policy):
    model_dir, model, tokenizer = tiny_policy
    prompts = [demo_task.demo_prompt("road")]
    first = generate_samples(model_dir, prompts, k=2, max_new_tokens=6, seed=7, model=model, tokenizer=tokenizer)
    second = generate_samples(model_dir, prompts, k=2, max_new_tokens=6, seed=7, model=model, tokenizer=tokenizer)
    assert first == second


def test_sequence_logprob_is_the_sum_of_token_logprobs_of_response_and_eos(tiny_policy):
    _, model, tokenizer = tiny_policy
    messages, response = demo_task.demo_prompt("boat"), "the warm boat slept."
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + r_ids])).logits[0]  # (L, V)
    logp = torch.log_softmax(logits, -1)
    expected = sum(logp[len(p_ids) - 1 + t, tok].item() for t, tok in enumerate(r_ids))
    got = sequence_logprobs(model, tokenizer, [messages], [response])
    assert got.item() == pytest.approx(expected, abs=1e-4)
    nll = mean_token_nll(model, tokenizer, [messages], [response])
    assert nll == pytest.approx(-expected / len(r_ids), abs=1e-4)
    assert math.isfinite(nll)


def test_batched_scoring_matches_one_at_a_time(tiny_policy):
    _, model, tokenizer = tiny_policy
    prompts = [demo_task.demo_prompt(n) for n in ("river", "meadow", "tower")]
    responses = ["the kind river shone.", "the grim meadow slept and the warm hill grew.", "x"]
    together = sequence_logprobs(model, tokenizer, prompts, responses, batch_size=3)
    alone = torch.cat([sequence_logprobs(model, tokenizer, [p], [r]) for p, r in zip(prompts, responses)])
    assert together.tolist() == pytest.approx(alone.tolist(), abs=1e-4)
