"""The in-memory collect-train loop: labelling, metrics, and a one-round smoke run."""
import math

import pytest

from training.ml import demo_task
from training.ml.generation import GeneratedSample
from training.ml.loop import LoopConfig, Trained, loop_rounds, rm_score_trend, round_label, run_loop
from training.ml.monitor import monitor_flags


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


# 20-step policies rarely end with EOS yet: the smoke runs gate them with limits they can pass
LAX_HEALTH = {"health_min_eos_rate": 0.0, "health_min_distinct_rate": 0.0, "health_max_nll_rise": 100.0,
              "health_prompts": 8}


@pytest.mark.slow
def test_one_round_smoke_produces_finite_metrics(tmp_path):
    config = LoopConfig(rounds=1, prompts_per_round=8, k=3, max_new_tokens=16, sft_steps=20, reward_steps=2,
                        dpo_epochs=1.0, **LAX_HEALTH)
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
    assert history[1]["policy_health"]["healthy"] and history[0]["gate"] == "passed"  # gated, and it passed


def test_loop_config_rejects_an_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer must be one of dpo, ppo, grpo"):
        LoopConfig(optimizer="sgd")


def test_rm_score_trend_compares_the_last_quarter_of_steps_with_the_first():
    steps = [{"rm_score": v} for v in (0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0)]
    assert rm_score_trend(steps) == pytest.approx((3.0 + 5.0) / 2 - (0.0 + 1.0) / 2)
    assert rm_score_trend([{"rm_score": 2.0}, {"rm_score": -1.0}]) == pytest.approx(-3.0)
    assert math.isnan(rm_score_trend([{"fn_score": 1.0}]))  # no reward model in the run


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, extra", [("ppo", {"ppo_ptx_coef": 0.5}), ("grpo", {})])
def test_one_round_rl_smoke_produces_finite_metrics_and_the_monitor(tmp_path, optimizer, extra):
    config = LoopConfig(optimizer=optimizer, rounds=1, prompts_per_round=8, k=3, max_new_tokens=16, sft_steps=20,
                        reward_steps=2, rl_reward_steps=2, ppo_steps=2, ppo_batch_size=4, grpo_steps=2,
                        grpo_batch_size=2, grpo_samples=4, **LAX_HEALTH, **extra)
    lines = []
    history = run_loop(config, tmp_path, utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations()[:200], build_base=demo_task.build_demo_base,
                       log=lines.append)
    assert [m["round"] for m in history] == [0, 1]
    for key in ("utility_mean", "utility_se", "kl_to_round0", "eos_rate", "distinct_rate", "nll_round0"):
        assert all(math.isfinite(m[key]) for m in history), key
    assert 0.0 <= history[0]["rm_accuracy"] <= 1.0
    after = history[1]
    assert math.isfinite(after["rm_score_change"]) and math.isfinite(after["policy_kl"])
    assert after["utility_change"] == pytest.approx(after["utility_mean"] - history[0]["utility_mean"])
    assert after["flags"] == monitor_flags(history[0], after)  # the monitor saw the run's RM trend
    assert (tmp_path / f"{optimizer}0" / "policy" / "config.json").exists()  # round 1 sampled from this policy
    assert any("round 1:" in line and "RM score Δ" in line for line in lines)


@pytest.mark.slow
def test_a_destructive_dpo_round_is_gated_retried_then_the_old_policy_kept_and_the_loop_fails(tmp_path):
    from training.ml.loop import safer_config
    from training.ml.monitor import loop_verdict

    config = LoopConfig(rounds=1, prompts_per_round=8, k=4, sft_steps=100, reward_steps=2, dpo_epochs=1.0,
                        dpo_learning_rate=0.05, health_prompts=16)
    lines = []
    history = run_loop(config, tmp_path, utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                       demonstrations=demo_task.load_demonstrations()[:1000], build_base=demo_task.build_demo_base,
                       log=lines.append)
    assert history[0]["policy_health"]["healthy"]  # round 0's SFT policy passes
    assert history[0]["gate_failed"] and "retried with" in history[0]["gate"] and "kept round 0's policy" in history[0]["gate"]
    assert (tmp_path / "dpo0" / "policy").exists() and (tmp_path / "dpo0-retry" / "policy").exists()
    assert history[1]["kl_to_round0"] == 0.0  # round 1 was generated by round 0's policy again
    assert any("failed the health gate" in flag for flag in history[0]["flags"])
    assert any("retrying once" in line for line in lines) and any("GATE:" in line for line in lines)
    assert any("utility did not rise" in p for p in loop_verdict(history))
    assert safer_config(config).dpo_learning_rate == 0.025


class ScriptedSteps:
    """Steps whose policies pass or fail the gate as scripted, for the loop's algorithm alone (no models)."""

    def __init__(self, verdicts):
        self.verdicts, self.calls = list(verdicts), []  # one verdict (True = healthy) per policy run, in order

    def bootstrap(self):
        return Trained("p0", {"healthy": True}, name="p0")

    def generate(self, r, policy):
        self.calls.append(("generate", r, policy.policy))
        return f"round{r}"

    def measure(self, r, rnd, policy):
        return {"utility_mean": [0.5, 0.2, 0.4][r], "utility_se": 0.05, "kl_to_round0": 0.0, "eos_rate": 1.0,
                "distinct_rate": 1.0, "nll_round0": 1.7, "mean_tokens": 9.0}

    def label(self, r, rnd):
        return {"rankings": 4}

    def train_reward(self, r, rnd):
        return f"rm{r}", {"rm_accuracy": 0.7}

    def train_policy(self, r, rnd, policy, reward_model, config, *, retry):
        self.calls.append(("train", r, policy.policy, reward_model, config.dpo_learning_rate))
        name = f"p{r + 1}" + ("-retry" if retry else "")
        healthy = self.verdicts.pop(0)
        return Trained(name, {"healthy": healthy, "reasons": [] if healthy else ["EOS 3%"]}, name=name,
                       figures={"trained": name}, carried={"rm_score_change": 1.0})

    def record(self, r, rnd, figures, previous):
        return {**figures, "flags": monitor_flags(previous, figures)}


def test_the_loop_retries_a_failed_policy_once_with_safer_settings_then_keeps_the_old_one():
    config = LoopConfig(rounds=2)
    steps = ScriptedSteps([False, False, False, True])  # round 0: both fail (kept); round 1: the retry passes
    lines = []
    history = loop_rounds(steps, config, log=lines.append)
    lr, safer = config.dpo_learning_rate, config.dpo_learning_rate / 2
    assert steps.calls == [("generate", 0, "p0"), ("train", 0, "p0", "rm0", lr), ("train", 0, "p0", "rm0", safer),
                           ("generate", 1, "p0"), ("train", 1, "p0", "rm1", lr), ("train", 1, "p0", "rm1", safer),
                           ("generate", 2, "p2-retry")]
    first, second, last = history
    assert first["gate_failed"] and first["gate"].endswith("failed again (EOS 3%); kept round 0's policy")
    assert first["trained"] == "p1-retry" and len(first["gate_checks"]) == 2 and first["rankings"] == 4
    assert "rm_score_change" not in second  # the kept policy was not trained on round 0
    assert second["gate"] == ("p2 failed (EOS 3%), retried with learning rate ÷2, KL anchor (β / kl_coef) ×2: "
                              "p2-retry passed") and "gate_failed" not in second
    assert last["rm_score_change"] == 1.0 and "gate" not in last and "rm_accuracy" not in last  # the last round
    assert second["utility_change"] == pytest.approx(-0.3) and second["flags"] and not last["flags"]
    assert [line.split("s] ")[1][:7] for line in lines if "] round" in line] == ["round 0", "round 1", "round 2"]
    assert sum("retrying once" in line for line in lines) == 2
