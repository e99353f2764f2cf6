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


@pytest.mark.slow
def test_dpo_on_a_labelled_round_starts_at_zero_implicit_reward_with_pairs_pointing_up_the_utility(tmp_path):
    """Issue 12 diagnosis, kept as a regression test: the reference DPO reads (each sample's stored generation
    log-prob, scored on the decoded text) equals the training forward's log-prob of the same tokens, so at
    step 1 every implicit reward is 0; and every pair round_label builds has chosen ≥ rejected in utility."""
    from training.ml.loop import round_generate, round_train_dpo
    from training.ml.utility_suite import fewest_words
    from training.ml.types import NullHooks

    base = str(demo_task.build_demo_base(tmp_path / "base", seed=0))  # untrained: byte junk, the hardest round trip
    config = LoopConfig(prompts_per_round=8, k=4, max_new_tokens=16, label_noise=0.0, tie_threshold=0.0,
                        dpo_epochs=1.0, dpo_rpo_alpha=0.0, num_threads=1)  # no RPO term: plain DPO starts at log 2
    prompts = [demo_task.demo_prompt(noun) for noun in demo_task.NOUNS[:8]]
    samples = round_generate(base, prompts, config=config, round_index=0)
    groups = round_label(prompts, samples, utility=fewest_words, config=config, round_index=0)
    assert sum(len(g.pairs()) for g in groups) >= 8
    for messages, group in zip(prompts, groups):
        for chosen, rejected, _, _ in group.pairs():
            assert fewest_words(messages, group.responses[chosen]) > fewest_words(messages, group.responses[rejected])
    hooks = NullHooks()
    round_train_dpo(base, groups, output_dir=tmp_path / "dpo", config=config, hooks=hooks)
    first = hooks.steps[0][1]
    assert abs(first["chosen_reward"]) < 1e-5 and abs(first["rejected_reward"]) < 1e-5
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


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
    with pytest.raises(ValueError, match="dpo_reference must be one of previous, round0"):
        LoopConfig(dpo_reference="sft")


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


@pytest.mark.slow
def test_the_in_memory_gate_applies_task_checks_a_fluent_but_malformed_policy_fails_only_with_them(tmp_path):
    """Issue 12: the in-memory gate ran no task check, so a policy fluent by NLL but off the task's grammar
    passed. A 100-step SFT policy is one (measured: ~39% of its replies parse, every one ends with EOS, NLL rise
    0 against itself); gated as round 0 through ``run_loop``, it fails with the demo grammar check only."""
    config = LoopConfig(rounds=0, sft_steps=100, health_prompts=16, prompts_per_round=8, k=3)
    kwargs = dict(utility=demo_task.demo_utility, prompt_pool=demo_task.make_prompt_pool(),
                  demonstrations=demo_task.load_demonstrations()[:1000], build_base=demo_task.build_demo_base,
                  log=lambda line: None)
    checked = run_loop(config, tmp_path / "checked", task_checks={"demo_grammar": demo_task.demo_grammar_check},
                       **kwargs)[0]["policy_health"]
    plain = run_loop(config, tmp_path / "plain", **kwargs)[0]["policy_health"]
    assert plain["healthy"] and plain["reasons"] == [] and plain["task_checks"] == {}
    assert plain["eos_rate"] >= 0.95 and plain["distinct_rate"] >= 0.9 and abs(plain["nll_rise"]) < 1e-6  # fluent
    rate = checked["task_checks"]["demo_grammar"]
    assert rate < 0.90  # HealthThresholds.min_task_pass_rate, the gate's default (as on the database)
    assert not checked["healthy"]
    assert checked["reasons"] == [f"task check demo_grammar: {100 * rate:.1f}% of replies pass < 90%"]
    for key in ("eos_rate", "distinct_rate", "nll_rise"):  # the same replies: only the task check differs
        assert checked[key] == pytest.approx(plain[key])
    assert any("final policy is unhealthy: task check demo_grammar" in p for p in loop_verdict_of(checked))


def loop_verdict_of(health: dict) -> list[str]:
    from training.ml.monitor import loop_verdict

    return loop_verdict([{"round": 0, "utility_mean": 0.0, "utility_se": 0.1, "policy_health": health}])


def test_the_loops_reward_model_trains_at_the_rate_it_was_measured_with(tmp_path, monkeypatch):
    """Users' reward runs divide the rate by √(pairs per prompt) (RewardConfig.group_lr_scaling); the loop's
    figures were measured with the rate as given, so the loop turns that off unless asked."""
    from training.ml import loop
    from training.ml.trainers import reward
    from training.ml.types import RankedGroup

    seen = []

    def capture(config, train, held_out, **_):
        seen.append(config)
        return {"model_dir": str(tmp_path), "final_eval": {"accuracy": 0.5}}
    monkeypatch.setattr(reward, "train_reward_model", capture)
    groups = [RankedGroup(i, [{"role": "user", "content": "q"}], ["a", "b", "c"], [[[0], [1], [2]]])
              for i in range(10)]
    config = LoopConfig(reward_learning_rate=2e-3)
    loop.round_train_reward_model(groups, base_model="m", output_dir=tmp_path, config=config)
    loop.round_train_reward_model(groups, base_model="m", output_dir=tmp_path,
                                  config=LoopConfig(reward_learning_rate=2e-3, reward_group_lr_scaling=True))
    assert [(c.learning_rate, c.group_lr_scaling) for c in seen] == [(2e-3, False), (2e-3, True)]
