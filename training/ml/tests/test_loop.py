"""The in-memory collect-train loop: labelling, metrics, and a one-round smoke run."""
import math

import pytest

from training.ml import demo_task
from training.ml.generation import GeneratedSample
from training.ml.loop import LoopConfig, round_label, run_loop, tiers_from_scores


def test_tiers_from_scores_orders_best_first_and_ties_near_scores():
    assert tiers_from_scores([0.1, 0.9, 0.12, 0.5], tie_threshold=0.05) == [[1], [3], [2, 0]]
    assert tiers_from_scores([1.0, 2.0], tie_threshold=0.0) == [[1], [0]]


def test_round_label_ranks_by_utility_and_keeps_generation_logprobs():
    prompts = [demo_task.demo_prompt("hill")]
    samples = [[GeneratedSample("the cold hill slept.", 5, True, -3.0),
                GeneratedSample("the warm hill grew.", 5, True, -4.0),
                GeneratedSample("nonsense", 2, False, -9.0)]]
    config = LoopConfig(label_noise=0.0, labelers=2)
    (group,) = round_label(prompts, samples, utility=demo_task.demo_utility, config=config, round_index=1)
    assert group.rankings == [[[1], [0], [2]], [[1], [0], [2]]]
    assert group.ref_logprobs == [-3.0, -4.0, -9.0]
    assert group.responses[1] == "the warm hill grew."
    assert len(group.pairs()) == 6


@pytest.mark.slow
def test_one_round_smoke_produces_finite_metrics(tmp_path):
    config = LoopConfig(rounds=1, prompts_per_round=8, k=3, max_new_tokens=16, sft_steps=20, reward_steps=2,
                        dpo_epochs=1.0)
    lines = []
    history = run_loop(config, tmp_path, utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations()[:200], build_base=demo_task.build_demo_base,
                       log=lines.append)
    assert [m["round"] for m in history] == [0, 1]
    for key in ("utility_mean", "utility_se", "kl_to_round0", "eos_rate", "distinct_rate", "nll_round0"):
        assert all(math.isfinite(m[key]) for m in history), key
    assert history[0]["kl_to_round0"] == pytest.approx(0.0, abs=1e-3)  # round 0 is the reference itself
    assert 0.0 <= history[0]["rm_accuracy"] <= 1.0
    assert any("round 1:" in line for line in lines)
