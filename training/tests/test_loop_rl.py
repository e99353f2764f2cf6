"""The Django loop's PPO/GRPO side: run settings from the pure loop's ``LoopConfig`` (one source of truth),
rollouts on the round's prompts, the over-optimisation monitor's RM score trend (``training.ml.monitor``'s rule,
as in memory), and the gate's retry on explicit run settings."""
import doctest
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.errors import InvalidInput
from training.health import health_settings_update
from training.loop import LoopSettings, _loop_config, explicit_settings, policy_run_config, rl_run_config
from training.ml.loop import LoopConfig, grpo_config, ppo_config, rm_score_trend, safer_config
from training.models import ModelArtifact, RoundReport, TrainingRun
from training.rounds import round_report_record, round_start

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("optimizer, build", [("ppo", ppo_config), ("grpo", grpo_config)])
def test_rl_runs_take_the_pure_loops_tuned_settings(optimizer, build):
    loop = _loop_config(LoopSettings(optimizer=optimizer, seed=2))
    assert loop.optimizer == optimizer and loop.reward_model_steps == LoopConfig().rl_reward_steps != LoopConfig().reward_steps
    config = rl_run_config(optimizer, loop)
    expected = build("x", LoopConfig(optimizer=optimizer, seed=2)).to_dict()
    assert config == {k: v for k, v in expected.items() if k not in ("base_model", "reward_model")}
    assert config["seed"] == 2 and config["max_steps"] == LoopConfig().ppo_steps == LoopConfig().grpo_steps
    assert _loop_config(LoopSettings(optimizer="dpo")).reward_model_steps == LoopConfig().reward_steps
    with pytest.raises(InvalidInput, match="--optimizer"):
        _loop_config(LoopSettings(optimizer="ppo", overrides={"optimizer": "dpo"}))


@pytest.mark.parametrize("optimizer, anchor", [("dpo", "beta"), ("ppo", "kl_coef"), ("grpo", "beta")])
def test_the_gates_retry_makes_explicit_run_settings_safer_by_the_same_rule(optimizer, anchor):
    loop = _loop_config(LoopSettings(optimizer=optimizer))
    first, retry = policy_run_config(optimizer, loop), policy_run_config(optimizer, safer_config(loop))
    assert retry["learning_rate"] == first["learning_rate"] / 2 and retry[anchor] == first[anchor] * 2
    explicit = {"learning_rate": 0.05, anchor: 0.3, "seed": 7}
    assert explicit_settings(explicit, attempt=first, loop=first) == explicit  # the first attempt: as given
    assert explicit_settings(explicit, attempt=retry, loop=first) == {"learning_rate": 0.025, anchor: 0.6, "seed": 7}


def test_doctests():
    from training import loop

    assert doctest.testmod(loop).failed == 0


def _rounds_with_trainer(project, policy, summary):
    first = round_start(project=project, policy_artifact=policy, prompts=["a"]).round
    TrainingRun.objects.filter(round=first).update(status="succeeded")
    trainer = TrainingRun.objects.create(project=project, kind="ppo", status="succeeded", base_artifact=policy,
                                         summary=summary)
    tuned = ModelArtifact.objects.create(project=project, kind="policy", name="p1", path=policy.path, run=trainer,
                                         parent=policy)
    second = round_start(project=project, policy_artifact=tuned, prompts=["b"]).round
    round_report_record(round=first, metrics={"utility_mean": 0.6, "utility_se": 0.02})
    return second, trainer


def test_the_flag_uses_the_runs_rm_score_trend_over_first_and_final_steps(ranked, stored_model, sent):
    project = ranked[0]
    policy = ModelArtifact.objects.create(project=project, kind="policy", name="p0", path=str(stored_model))
    # first vs final step says the RM score fell, but its trend over the quarters rose: the trend decides
    second, trainer = _rounds_with_trainer(project, policy, {"first": {"rm_score": 0.9}, "final": {"rm_score": 0.1},
                                                              "rm_score_change": 0.4})
    report = round_report_record(round=second, metrics={"utility_mean": 0.3, "utility_se": 0.02})
    trainer.refresh_from_db()
    assert report.overoptimised and trainer.overoptimised and "rose by 0.400" in report.flag_reason
    trainer.summary = {"first": {"rm_score": 0.1}, "final": {"rm_score": 0.9}, "rm_score_change": -0.2}
    trainer.save()
    report = round_report_record(round=second, metrics={"utility_mean": 0.3})
    # the RM's trend fell too: a bad policy, not over-optimisation; the labelers' fall itself is flagged (issue 12)
    assert report.flag_reason.startswith("labelers' utility fell") and "reward-model" not in report.flag_reason


@pytest.mark.slow
def test_run_loop_grpo_rolls_out_on_the_rounds_prompts_and_reports_the_rm_trend(make_user, make_project,
                                                                                 artifact_root, capsys):
    from training.ml.demo_task import load_demonstrations
    from training.policy_data import policy_data_import

    project = make_project(slug="story", k=4, prompts=0, researchers=[make_user("rita")])
    lines = [json.dumps({"messages": m, "response": r}) for m, r in load_demonstrations()[:200]]
    lines += [json.dumps({"prompt": f"Continue the story about the {n}."}) for n in
              ("river", "road", "hill", "boat", "tower", "field", "market", "garden", "bridge", "forest")]
    policy_data_import(project=project, lines=lines)
    # 20-step policies rarely end with EOS yet: gate them with limits they can pass (the gate: test_health_gate.py)
    health_settings_update(project=project, thresholds={"min_eos_rate": 0.0, "min_distinct_rate": 0.0,
                                                        "max_nll_rise": 100.0, "prompts": 8})
    try:  # a one-round toy loop need not raise the utility: then the command fails (exit 1) after its report
        call_command("run_loop", "--project", "story", "--rounds", "1", "--in-process", "--prompts-per-round", "4",
                     "--optimizer", "grpo", "--loop-config", json.dumps({
                         "sft_steps": 20, "rl_reward_steps": 3, "max_new_tokens": 12, "grpo_steps": 2,
                         "grpo_batch_size": 2, "grpo_samples": 4}))
    except CommandError as error:
        assert str(error).startswith("loop failed: the utility did not rise")
    out = capsys.readouterr().out
    grpo = TrainingRun.objects.get(project=project, kind="grpo")
    rounds = list(project.rounds.filter(number__gt=1).order_by("number"))
    assert grpo.round == rounds[0] and grpo.config["max_steps"] == 2 and grpo.config["beta"] == LoopConfig().grpo_beta
    assert f"GRPO on {rounds[0].prompts.count()} round {rounds[0].number}'s prompts" in grpo.log_tail and TrainingRun.objects.get(kind="reward").config["max_steps"] == 3
    steps = [p.values for p in grpo.metrics.filter(split="train").order_by("step")]
    assert len(steps) == 2 and grpo.summary["rm_score_change"] == pytest.approx(rm_score_trend(steps))
    report = RoundReport.objects.get(round=rounds[1])
    assert report.policy.run == grpo and report.metrics["rm_score_change"] == pytest.approx(rm_score_trend(steps))
    assert "RM score Δ" in out and "utility Δ" in out
