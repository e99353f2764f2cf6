"""The health gate: a fluent policy passes, a byte-junk policy is stopped, with the reasons named."""
import pytest
import torch

from training.ml import demo_task
from training.ml.generation import load_policy
from training.ml.health import HealthThresholds, format_health, health_verdict, policy_health
from training.ml.tests.junk import round0_and_junk


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    round0_dir, junk_dir = round0_and_junk(tmp_path_factory.mktemp("health"))
    prompts = [demo_task.demo_prompt(n) for n in demo_task.NOUNS]
    return load_policy(round0_dir), load_policy(junk_dir), prompts


def test_round0_policy_is_healthy_against_itself(policies):
    round0, _, prompts = policies
    t = HealthThresholds(min_task_pass_rate=0.75)  # a 100-step SFT follows the grammar in ~84% of its replies
    rng_state = torch.get_rng_state()
    h = policy_health(round0, round0, prompts, thresholds=t, reference=round0,
                      task_checks=[demo_task.demo_grammar_check])
    assert h["healthy"], h["reasons"]
    assert torch.equal(torch.get_rng_state(), rng_state)  # the loop's random stream is not disturbed
    assert h["nll_rise"] == pytest.approx(0.0, abs=1e-6)  # same prompts, same seed: the same replies
    assert h["kl_to_round0"] == 0.0 and h["kl_to_reference"] == 0.0
    assert h["eos_rate"] >= 0.95 and h["distinct_rate"] >= 0.9
    assert h["task_checks"]["demo_grammar_check"] >= 0.75
    assert format_health(h).startswith("health HEALTHY")


def test_junk_policy_is_stopped_with_its_reasons(policies):
    round0, junk, prompts = policies
    h = policy_health(junk, round0, prompts, thresholds=HealthThresholds(min_task_pass_rate=0.75), reference=round0,
                      task_checks={"grammar": demo_task.demo_grammar_check})
    assert not h["healthy"]
    assert h["nll_rise"] > 1.0
    assert any("NLL under round 0 rose" in r for r in h["reasons"])
    assert h["task_checks"]["grammar"] < 0.5 and any("task check grammar" in r for r in h["reasons"])
    assert h["kl_to_round0"] > 1.0 and h["kl_to_reference"] == pytest.approx(h["kl_to_round0"])
    assert "UNHEALTHY" in format_health(h)


def test_thresholds_are_per_project_settings_and_reject_typos():
    t = HealthThresholds.from_dict({"max_nll_rise": 0.5, "min_eos_rate": 0.8})
    assert (t.max_nll_rise, t.min_eos_rate, t.min_distinct_rate) == (0.5, 0.8, 0.9)
    with pytest.raises(ValueError, match="unknown health setting 'max_nll'"):
        HealthThresholds.from_dict({"max_nll": 0.5})
    with pytest.raises(ValueError, match="min_eos_rate must be between 0 and 1"):
        HealthThresholds.from_dict({"min_eos_rate": 95})


def test_verdict_names_each_failed_check():
    figures = {"eos_rate": 0.5, "distinct_rate": 0.6, "nll_rise": 2.0, "kl_to_round0": 9.0, "kl_to_reference": 1.0,
               "task_checks": {"grammar": 0.95}}
    reasons = health_verdict(figures, HealthThresholds(max_kl_to_round0=5.0))
    assert [r.split()[0] for r in reasons] == ["EOS", "distinct", "NLL", "kl"]
    assert health_verdict({**figures, "eos_rate": 1.0, "distinct_rate": 1.0, "nll_rise": 0.6}, HealthThresholds()) == []


def test_a_floor_round_0_itself_misses_is_reported_not_gated_but_the_nll_rise_still_is():
    """An untrained base that never ends its replies (the fresh demo's tiny LM): its DPO child is not blocked
    for a low EOS rate, yet junk (a big NLL rise) or a fall in distinct replies below a floor round 0 met is."""
    t = HealthThresholds()
    low_base = {"eos_rate": 0.06, "eos_rate_round0": 0.08, "distinct_rate": 0.95, "distinct_rate_round0": 0.97,
                "nll_rise": 0.2}
    assert health_verdict(low_base, t) == []
    assert health_verdict({**low_base, "eos_rate_round0": 0.99}, t) == ["EOS rate 6.0% < 95%"]
    assert health_verdict({**low_base, "nll_rise": 3.0}, t) == ["NLL under round 0 rose +3.00 nats/token > +1.00"]
    assert health_verdict({**low_base, "distinct_rate": 0.5}, t) == ["distinct replies 50.0% < 90%"]
    assert health_verdict({k: v for k, v in low_base.items() if not k.endswith("_round0")}, t) == [
        "EOS rate 6.0% < 95%"]  # round 0 not sampled (its NLL given): the floors apply as set
