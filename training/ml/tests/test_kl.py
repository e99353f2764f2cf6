"""KL bookkeeping: a policy's KL to itself is 0 and to another policy ≥ 0, also on degenerate (byte-junk) output.

The old estimate (mean of log π_r − log π_0 on the *decoded and re-tokenised* text) went negative on
degenerate DPO policies: junk replies are sampled as byte tokens that decode to "�" and re-tokenise into
other tokens, which the sampling policy scores far lower than what it drew, and de-duplicated samples are
not draws from π_r. ``token_kl`` scores the sampled tokens themselves with an exact per-token KL.
"""
import statistics

import pytest
import torch

from training.ml import demo_task
from training.ml.generation import (
    collate_scoring, generate_samples, load_policy, prompt_ids, response_ids, sample_token_ids, sequence_logprobs,
    token_kl, token_logprobs,
)
from training.ml.loop import round_metrics
from training.ml.tests.junk import round0_and_junk



@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    round0_dir, junk_dir = round0_and_junk(root)
    round0, junk = load_policy(round0_dir), load_policy(junk_dir)
    prompts = [demo_task.demo_prompt(n) for n in ("river", "hill", "boat", "road")] * 8
    return round0_dir, junk_dir, round0, junk, prompts


def _mean_se(values):
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def test_kl_of_a_policy_to_itself_is_zero_on_its_own_and_on_junk_samples(policies):
    round0_dir, junk_dir, (model0, tok), (junk, _), prompts = policies
    for model_dir, model in ((round0_dir, model0), (junk_dir, junk)):
        samples = generate_samples(model_dir, prompts, k=4, seed=1, max_attempts=1, model=model, tokenizer=tok)
        flat_p = [m for m, g in zip(prompts, samples) for _ in g]
        ids = [sample_token_ids(tok, s) for g in samples for s in g]
        for policy in (model0, junk):
            assert token_kl(policy, policy, tok, flat_p, ids).abs().max().item() == 0.0


def test_kl_of_a_junk_policy_to_round0_is_positive_and_matches_the_log_ratio_on_its_sampled_tokens(policies):
    _, junk_dir, (model0, tok), (junk, _), prompts = policies
    samples = generate_samples(junk_dir, prompts, k=4, seed=2, max_attempts=1, model=junk, tokenizer=tok)
    flat_p = [m for m, g in zip(prompts, samples) for _ in g]
    flat = [s for g in samples for s in g]
    assert sum(not s.text.isascii() for s in flat) > len(flat) // 2  # degenerate: most replies carry byte junk
    ids = [sample_token_ids(tok, s) for s in flat]
    retokenised = [response_ids(tok, s.text) for s in flat]
    assert sum(a != b for a, b in zip(ids, retokenised)) > len(flat) // 4  # the cause: re-tokenising changes tokens
    kl = token_kl(junk, model0, tok, flat_p, ids).tolist()
    assert min(kl) >= 0.0
    mean, se = _mean_se(kl)
    assert mean > 5 * se > 0
    batch = collate_scoring([(prompt_ids(tok, m), r) for m, r in zip(flat_p, ids)], tok.pad_token_id)
    with torch.no_grad():
        log_ratio = (token_logprobs(junk, batch) - token_logprobs(model0, batch)).sum(1).tolist()
    lr_mean, lr_se = _mean_se(log_ratio)  # the plain Monte-Carlo estimate on the sampled tokens agrees
    assert abs(lr_mean - mean) < 3 * (lr_se + se)
    # the old bookkeeping (re-tokenised text under both) is biased low on these samples
    old = [a - b for a, b in zip(sequence_logprobs(junk, tok, flat_p, [s.text for s in flat]).tolist(),
                                 sequence_logprobs(model0, tok, flat_p, [s.text for s in flat]).tolist())]
    assert statistics.fmean(old) < lr_mean - 3 * lr_se


def test_round_metrics_kl_is_zero_for_round0_and_nonnegative_for_junk_with_its_standard_error(policies):
    round0_dir, junk_dir, round0, junk, prompts = policies
    for model_dir, policy, expect_zero in ((round0_dir, round0, True), (junk_dir, junk, False)):
        samples = generate_samples(model_dir, prompts, k=4, seed=3, model=policy[0], tokenizer=policy[1])
        m = round_metrics(prompts, samples, utility=demo_task.demo_utility, round0=round0, policy=policy)
        if expect_zero:
            assert m["kl_to_round0"] == 0.0 and m["kl_to_round0_se"] == 0.0
        else:
            assert m["kl_to_round0"] > 3 * m["kl_to_round0_se"] > 0
