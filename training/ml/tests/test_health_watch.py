"""In-run health checks: a DPO run at a destructive learning rate ends in junk, and the policy kept is the last
healthy one (the same parameters as the run's checkpoint of that step); with ``health_every`` 0 nothing changes;
every policy trainer reports the check's figures as step metrics."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from training.ml import demo_task
from training.ml.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig
from training.ml.generation import load_policy
from training.ml.health import HealthThresholds, policy_health
from training.ml.health_watch import KEPT_DIR, RECORD, HealthWatch, InRunHealth, kept_record
from training.ml.trainers.dpo import train_dpo
from training.ml.trainers.grpo import train_grpo
from training.ml.trainers.ppo import train_ppo
from training.ml.trainers.sft import train_sft
from training.ml.types import NullHooks, RankedGroup

PROMPTS = [demo_task.demo_prompt(noun) for noun in demo_task.NOUNS]
THRESHOLDS = HealthThresholds(prompts=8)


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    """Round 0: the demo's tiny base after 60 SFT steps (its replies are fluent; ~2 s)."""
    root = tmp_path_factory.mktemp("health_watch")
    base = demo_task.build_demo_base(root / "base", seed=0, hidden=32)
    config = SFTConfig(base_model=str(base), seed=0, max_steps=60, learning_rate=3e-3, batch_size=32, num_threads=1,
                       eval_every=10_000, checkpoint_every=10_000, eval_fraction=0.0, lr_scheduler="constant")
    summary = train_sft(config, demo_task.load_demonstrations()[:1000], output_dir=root / "sft", hooks=NullHooks(),
                        resume=False)
    return summary["policy_dir"], load_policy(summary["policy_dir"])


def _groups(n: int, seed: int) -> list[RankedGroup]:
    """Bright over dark words (as test_dpo's toy preference), reference log-probs computed by the trainer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        noun = rng.choice(demo_task.NOUNS)
        words = [rng.choice(demo_task.BRIGHT), rng.choice(demo_task.BRIGHT), rng.choice(demo_task.DARK),
                 rng.choice(demo_task.DARK)]
        out.append(RankedGroup(prompt_id=i, messages=demo_task.demo_prompt(noun), rankings=[[[0, 1], [2, 3]]],
                               responses=[f"the {w} {noun} {rng.choice(demo_task.VERBS)}." for w in words],
                               ref_logprobs=[None] * 4))
    return out


def _destructive_dpo(policy_dir: str, round0, out, *, health_every: int) -> tuple[dict, NullHooks]:
    """DPO at learning rate 0.01 (warm-up over 6 of 12 steps): the first steps stay near round 0, the last are junk
    (NLL under round 0 +2.3 nats/token). Checkpoints every 2 steps, all kept, to compare with the kept policy."""
    config = DPOConfig(base_model=policy_dir, beta=0.1, learning_rate=0.01, batch_size=8, max_steps=12,
                       lr_scheduler="linear", warmup_ratio=0.5, num_threads=1, eval_every=1000, checkpoint_every=2,
                       keep_checkpoints=10, health_every=health_every, health_prompts=8)
    hooks = NullHooks()
    watch = HealthWatch(prompts=PROMPTS, thresholds=THRESHOLDS, round0=round0, reference=round0)
    return train_dpo(config, _groups(48, seed=1), [], output_dir=out, hooks=hooks, resume=False,
                     health_watch=watch), hooks


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(next(iter(sorted(model_dir.glob("*.safetensors")))))


def test_a_destructive_run_ends_in_junk_and_the_last_healthy_policy_is_kept(round0, tmp_path):
    policy_dir, round0_policy = round0
    summary, hooks = _destructive_dpo(policy_dir, round0_policy, tmp_path, health_every=2)
    watch = summary["health_watch"]
    checks = {step: m for step, m in hooks.steps if "healthy" in m}
    assert sorted(checks) == watch["checked_steps"] == [2, 4, 6, 8, 10]  # every 2 steps; step 12 is the gate's
    assert {"health_eos_rate", "health_distinct_rate", "health_nll_rise", "health_kl_to_round0",
            "health_kl_to_reference"} <= set(checks[2])
    kept = watch["kept_step"]
    assert kept is not None and checks[kept]["healthy"] == 1.0  # the last check that passed ...
    assert all(m["healthy"] == 0.0 for step, m in checks.items() if step > kept)  # ... and none after it
    reasons = watch["last_failed"]["reasons"]
    assert watch["last_failed"]["step"] == 10 and any("NLL under round 0 rose" in r for r in reasons), reasons

    final = policy_health(load_policy(summary["policy_dir"]), round0_policy, PROMPTS, thresholds=THRESHOLDS)
    assert not final["healthy"] and final["nll_rise"] > 1.0  # the run ended in junk

    kept_dir = tmp_path / KEPT_DIR
    assert watch["kept_dir"] == str(kept_dir) and kept_record(tmp_path)["step"] == kept
    saved, checkpoint = _weights(kept_dir), _weights(tmp_path / "checkpoints" / f"step-{kept:08d}" / "model")
    assert saved.keys() == checkpoint.keys() and all(torch.equal(saved[k], checkpoint[k]) for k in saved)
    assert any(not torch.equal(saved[k], v) for k, v in _weights(tmp_path / "policy").items())  # not the final one
    again = policy_health(load_policy(kept_dir), round0_policy, PROMPTS, thresholds=THRESHOLDS)
    recorded = json.loads((kept_dir / RECORD).read_text())["health"]
    assert again["healthy"] and again["nll_rise"] == pytest.approx(recorded["nll_rise"])  # the gate's rule, again


def test_with_health_every_0_nothing_changes_and_the_checks_do_not_move_training(round0, tmp_path):
    policy_dir, round0_policy = round0
    checked, _ = _destructive_dpo(policy_dir, round0_policy, tmp_path / "on", health_every=2)
    summary, hooks = _destructive_dpo(policy_dir, round0_policy, tmp_path / "off", health_every=0)
    assert "health_watch" not in summary and not (tmp_path / "off" / KEPT_DIR).exists()
    assert not any(k.startswith("health") or k == "healthy" for _, m in hooks.steps for k in m)
    assert not any("in-run check" in message for message in hooks.messages)
    on, off = _weights(tmp_path / "on" / "policy"), _weights(tmp_path / "off" / "policy")
    assert all(torch.equal(on[k], off[k]) for k in on)  # the checks draw from their own random stream


def test_a_kept_policy_beyond_the_step_a_run_resumes_from_is_dropped(tmp_path):
    watch = HealthWatch(prompts=PROMPTS)
    (tmp_path / KEPT_DIR).mkdir()
    (tmp_path / KEPT_DIR / RECORD).write_text(json.dumps({"step": 6, "health": {}}))
    resumed = InRunHealth(watch, every=2, prompts=8, output_dir=tmp_path, hooks=NullHooks(), resume_step=6)
    assert resumed.kept_step == 6 and (tmp_path / KEPT_DIR).exists()
    earlier = InRunHealth(watch, every=2, prompts=8, output_dir=tmp_path, hooks=NullHooks(), resume_step=4)
    assert earlier.kept_step is None and not (tmp_path / KEPT_DIR).exists()  # step 6 will be checked again
    assert earlier.summary()["health_watch"]["kept_dir"] is None
    assert InRunHealth(None, every=2, prompts=8, output_dir=tmp_path, hooks=NullHooks()).summary() == {}


@pytest.mark.parametrize("kind", ["sft", "ppo", "grpo"])
def test_every_policy_trainer_reports_the_checks_figures_as_step_metrics(kind, round0, tmp_path):
    policy_dir, round0_policy = round0
    common = dict(base_model=policy_dir, max_steps=3, num_threads=1, checkpoint_every=1000, eval_every=1000,
                  health_every=2, health_prompts=4, learning_rate=1e-4)
    watch = HealthWatch(prompts=PROMPTS, thresholds=THRESHOLDS, round0=round0_policy, reference=round0_policy)
    hooks = NullHooks()
    if kind == "sft":
        summary = train_sft(SFTConfig(**common, batch_size=8, eval_fraction=0.0), demo_task.load_demonstrations()[:64],
                            output_dir=tmp_path, hooks=hooks, resume=False, health_watch=watch)
    else:
        rl = dict(batch_size=4, max_new_tokens=8, reward_fn="length")
        train, config = ((train_ppo, PPOConfig(**common, **rl)) if kind == "ppo"
                         else (train_grpo, GRPOConfig(**common, **rl, samples_per_prompt=2)))
        summary = train(config, PROMPTS, policy_dir=policy_dir, output_dir=str(tmp_path), hooks=hooks, resume=False,
                        reward_fn=lambda messages, text: float(len(text)), health_watch=watch)
    checked = [step for step, m in hooks.steps if "healthy" in m]
    assert checked == summary["health_watch"]["checked_steps"] == [2]  # step 3 is the final: the gate's
    assert {"health_eos_rate", "health_nll_rise", "health_kl_to_round0"} <= set(dict(hooks.steps)[2])
    assert summary["health_watch"]["kept_step"] == 2 and kept_record(tmp_path)["step"] == 2  # 1e-4: still healthy


def test_the_in_run_check_compares_task_checks_with_round_0_measured_once(round0, tmp_path):
    """The same rule as the gate: a policy parsing as often as round 0 passes under a floor it misses; round 0's
    rate is measured at the first check and kept for the run; without round 0 the floor alone applies."""
    import copy

    _, round0_policy = round0
    checks = {"grammar": demo_task.demo_grammar_check}
    twin = (copy.deepcopy(round0_policy[0]), round0_policy[1])
    t = HealthThresholds(prompts=8, min_task_pass_rate=1.0)
    watch = HealthWatch(prompts=PROMPTS, thresholds=t, round0=round0_policy, task_checks=checks)
    check = InRunHealth(watch, every=1, prompts=8, output_dir=tmp_path / "a", hooks=NullHooks())
    metrics = check.at_step(1, 10, *twin)
    rate = check.baseline["task_checks_round0"]["grammar"]
    assert rate < 1.0 and metrics["health_task_grammar"] == rate and metrics["healthy"] == 1.0
    first = check.baseline
    check.at_step(2, 10, *twin)
    assert check.baseline is first  # measured once per run
    alone = InRunHealth(HealthWatch(prompts=PROMPTS, thresholds=t, task_checks=checks), every=1, prompts=8,
                        output_dir=tmp_path / "b", hooks=NullHooks())
    assert alone.at_step(1, 10, *twin)["healthy"] == 0.0
    assert alone.last_failed["reasons"] == [f"task check grammar: {100 * rate:.1f}% of replies pass < 100%"]
