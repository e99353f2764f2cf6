"""The health gate: a fluent policy passes, a byte-junk policy is stopped, with the reasons named; a task check
fails only below both its absolute floor and round 0's own pass rate by more than ``task_check_z`` SE."""
import copy
import math

import pytest
import torch

from training.ml import demo_task
from training.ml.generation import load_policy
from training.ml.health import (HealthThresholds, format_health, health_verdict, pass_rate_se, policy_health,
                                round0_baseline, task_check_reason)
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
    r0 = h["task_checks_round0"]["grammar"]  # round 0 sampled on the same prompts, with the same seed
    assert r0 > 0.75 and h["replies_round0"] == h["replies"]
    assert (f"task check grammar: {100 * h['task_checks']['grammar']:.1f}% of replies pass, below round 0's "
            f"{100 * r0:.1f}% by ") in "; ".join(h["reasons"])
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


# ----------------------------------------------------------------------------- task checks relative to round 0
def _task(rate, rate0=None, n=128, n0=128) -> dict:
    figures = {"eos_rate": 1.0, "distinct_rate": 1.0, "nll_rise": 0.0, "task_checks": {"demo_grammar": rate},
               "replies": n}
    if rate0 is not None:
        figures.update(task_checks_round0={"demo_grammar": rate0}, replies_round0=n0)
    return figures


def test_pass_rate_se_on_hand_computed_numbers():
    # sqrt(0.9·0.1/400 + 0.5·0.5/100) = sqrt(0.000225 + 0.0025) = sqrt(0.002725)
    assert pass_rate_se(0.5, 100, 0.9, 400) == pytest.approx(0.0522015325, abs=1e-9)
    # 128 replies each, 93% and 88%: sqrt(0.0651/128 + 0.1056/128) = sqrt(0.1707/128)
    assert pass_rate_se(0.88, 128, 0.93, 128) == pytest.approx(math.sqrt(0.1707 / 128), abs=1e-12)
    assert pass_rate_se(1.0, 10, 0.0, 10) == 0.0
    # the z boundary: 0.5 is (0.9 − 0.5) / 0.0522015 = 7.6626 SE below round 0 (the floor 0.9 not met)
    assert task_check_reason("g", 0.5, 100, HealthThresholds(task_check_z=7.67), 0.9, 400) is None
    assert task_check_reason("g", 0.5, 100, HealthThresholds(task_check_z=7.66), 0.9, 400) == (
        "task check g: 50.0% of replies pass, below round 0's 90.0% by 7.7 SE (> 7.66) and below the 90% floor")


def test_a_policy_within_sampling_noise_of_round_0_passes_below_the_floor():
    """Issue 12's demo: round 0 parses ~93%, a policy 88% of 128 replies: 1.4 SE apart, noise, not drift."""
    t = HealthThresholds()
    assert health_verdict(_task(0.88, 0.93), t) == []
    assert health_verdict(_task(0.88), t) == ["task check demo_grammar: 88.0% of replies pass < 90%"]  # floor alone
    assert health_verdict(_task(0.88, 0.93), HealthThresholds(task_check_z=1.0)) != []  # 1.37 SE > 1
    assert health_verdict(_task(0.91, 0.99), HealthThresholds(task_check_z=1.0)) == []  # above the floor: passes


def test_a_policy_far_below_round_0_fails_with_both_rates_named():
    # SE = sqrt(0.93·0.07/128 + 0.4·0.6/128) = 0.048819; (0.93 − 0.40) / SE = 10.86
    assert health_verdict(_task(0.40, 0.93), HealthThresholds()) == [
        "task check demo_grammar: 40.0% of replies pass, below round 0's 93.0% by 10.9 SE (> 3.0) "
        "and below the 90% floor"]
    assert health_verdict(_task(0.0, 1.0), HealthThresholds()) == [  # no spread at all: still below round 0
        "task check demo_grammar: 0.0% of replies pass, below round 0's 100.0% (no sampling spread) "
        "and below the 90% floor"]


def test_without_round_0s_rate_a_task_check_falls_back_to_the_absolute_floor():
    t = HealthThresholds()
    floor_only = ["task check demo_grammar: 40.0% of replies pass < 90%"]
    assert health_verdict(_task(0.40), t) == floor_only
    assert health_verdict({**_task(0.40, 0.41), "task_checks_round0": {"other": 0.41}}, t) == floor_only
    assert health_verdict({**_task(0.40, 0.41), "replies_round0": None}, t) == floor_only
    assert health_verdict(_task(0.40, 0.41), t) == []  # with round 0 at 41%: 40% is no worse than round 0
    assert health_verdict(_task(0.95), t) == []


def test_policy_health_compares_task_checks_with_round_0_unless_round_0_is_the_policy_itself(policies):
    """The same weights as another object stand for round 0: the policy passes at round 0's own rate, even under
    a floor it misses; the policy as its own round 0 (no round 0 in the lineage) meets the floor alone."""
    round0, _, prompts = policies
    checks = {"grammar": demo_task.demo_grammar_check}
    twin = (copy.deepcopy(round0[0]), round0[1])
    t = HealthThresholds(min_task_pass_rate=1.0)
    h = policy_health(twin, round0, prompts, thresholds=t, task_checks=checks)
    rate = h["task_checks"]["grammar"]
    assert rate < 1.0 and h["task_checks_round0"] == {"grammar": rate} and h["healthy"], h["reasons"]
    assert f"task checks grammar {100 * rate:.1f}% (round 0 {100 * rate:.1f}%)" in format_health(h)
    own = policy_health(round0, round0, prompts, thresholds=t, task_checks=checks)
    assert own["task_checks_round0"] == {} and own["reasons"] == [
        f"task check grammar: {100 * rate:.1f}% of replies pass < 100%"]
    assert "(round 0 —)" in format_health(own)
    baseline = round0_baseline(round0, prompts, t, checks)  # computed once, given to later checks
    assert baseline["task_checks_round0"] == {"grammar": rate} and baseline["replies_round0"] == h["replies"]
    again = policy_health(twin, round0, prompts, thresholds=t, task_checks=checks, baseline=baseline)
    assert again["task_checks_round0"] == {"grammar": rate} and again["healthy"]
    nll_only = policy_health(twin, round0, prompts, thresholds=t, task_checks=checks,
                             round0_nll=baseline["nll_round0_baseline"])
    assert nll_only["task_checks_round0"] == {} and not nll_only["healthy"]  # round 0's rate not known: the floor


@pytest.mark.parametrize("bad", ["3", "abc", float("nan"), float("inf"), -0.5, 10.5, 1e300, True, None, [3]])
def test_task_check_z_must_be_a_finite_number_of_standard_errors(bad):
    with pytest.raises(ValueError, match="task_check_z must be a number of standard errors between 0 and 10"):
        HealthThresholds.from_dict({"task_check_z": bad})


def test_task_check_z_accepts_numbers_in_range_and_defaults_to_3():
    assert HealthThresholds().task_check_z == 3.0 and HealthThresholds.from_dict({}).task_check_z == 3.0
    assert [HealthThresholds.from_dict({"task_check_z": z}).task_check_z for z in (0, 2.5, 10)] == [0, 2.5, 10]
    with pytest.raises(ValueError, match="min_task_pass_rate must be between 0 and 1"):
        HealthThresholds.from_dict({"min_task_pass_rate": "0.9"})  # a string: refused with the rule, not a TypeError
