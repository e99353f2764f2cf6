"""The loop's monitor: flags on constructed figures, the verdict, the round line (both loops use these)."""
import doctest
import math

import pytest

from training.ml import monitor
from training.ml.monitor import format_round, gate_flag, loop_verdict, monitor_flags, round_flags


def test_doctests():
    assert doctest.testmod(monitor).failed == 0


def _round(utility, se=0.05, **more):
    return {"utility_mean": utility, "utility_se": se, **more}


@pytest.mark.parametrize("rm, utility, expected", [
    ({"rm_score_change": 0.8}, (0.50, 0.20), "over"),        # RM up during the run, labelers clearly down
    ({"rm_score_prev_round": 0.1, "rm_score_mean": 0.9}, (0.50, 0.20), "over"),  # RM up on the rounds' samples
    ({"rm_score_change": 0.8}, (0.50, 0.48), None),          # RM up, labelers within noise
    ({"rm_score_change": -0.8}, (0.50, 0.20), "fall"),       # both down: not over-optimisation, but a fall
    ({"rm_score_change": 0.8}, (0.20, 0.50), None),          # both up
    ({"rm_score_change": None}, (0.50, 0.20), "fall"),       # no RM evidence
    ({"rm_score_change": math.nan}, (0.50, 0.20), "fall"),   # unusable RM evidence
    ({}, (0.50, math.nan), None),                            # no utility to compare
])
def test_monitor_flags_on_constructed_numbers(rm, utility, expected):
    flags = monitor_flags(_round(utility[0]), _round(utility[1], **rm))
    if expected is None:
        assert flags == []
    elif expected == "over":
        assert len(flags) == 1 and flags[0].startswith("reward-model score rose by 0.800 ")
        assert "labelers' utility fell by 0.300 (more than its standard error 0.071)" in flags[0]
    else:
        assert flags == ["labelers' utility fell by 0.300 (more than its standard error 0.071)"]


def test_each_piece_of_rm_evidence_is_its_own_reason_and_round_0_has_none():
    current = _round(0.2, rm_score_prev_round=0.1, rm_score_mean=0.3, rm_score_change=0.5)
    flags = monitor_flags(_round(0.5), current)
    assert [f.split(" while")[0] for f in flags] == [
        "reward-model score rose by 0.200 on this round's samples over the previous round's",
        "reward-model score rose by 0.500 during the policy run"]
    assert monitor_flags(None, current) == []
    assert monitor_flags({"utility_mean": 0.5}, {"utility_mean": 0.45}) == [  # a missing se counts 0
        "labelers' utility fell by 0.050 (more than its standard error 0.000)"]


def test_round_flags_add_the_gates_after_the_monitors():
    kept = _round(0.2, gate_failed=True, gate="dpo run 3's policy failed (…); kept round 1's policy")
    assert gate_flag(_round(0.2, gate="passed")) is None
    assert round_flags(_round(0.5), kept) == [
        "labelers' utility fell by 0.300 (more than its standard error 0.071)",
        "the policy trained on this round failed the health gate: dpo run 3's policy failed (…); kept round 1's policy"]
    assert round_flags(None, kept) == [gate_flag(kept)]


def test_loop_verdict_needs_a_healthy_final_policy_and_a_rise_beyond_one_standard_error():
    healthy = {"healthy": True, "reasons": []}
    assert loop_verdict([_round(0.0), _round(0.2, policy_health=healthy)]) == []
    problems = loop_verdict([_round(0.0), _round(0.05, policy_health={"healthy": False, "reasons": ["EOS 3%"]})])
    assert problems == ["the final policy is unhealthy: EOS 3%",
                        "the utility did not rise: +0.050 (standard error 0.071)"]


def test_the_round_line_prints_what_a_round_has():
    m = {"round": 1, "elapsed_s": 12.34, "utility_mean": 0.25, "utility_se": 0.031, "kl_to_round0": 0.2,
         "eos_rate": 1.0, "distinct_rate": 0.998, "nll_round0": 1.7, "mean_tokens": 9.46, "rm_accuracy": 0.61,
         "policy_health": {"healthy": True, "nll_rise": 0.031}}
    assert format_round(m) == ("[  12.3s] round 1: utility +0.250 ± 0.031 | RM acc 0.610 | KL to r0 0.200 | EOS 100.0%"
                               " | distinct 99.8% | NLL@r0 1.700 | tokens 9.5 | health ok (NLL rise +0.03)")
    db = {**m, "round_number": 3, "rm_accuracy": None, "eos_rate": None, "rm_score_change": 0.4, "utility_change": -0.3,
          "policy_health": {"healthy": False}, "gate": "passed", "flags": ["a", "b"]}
    assert format_round(db) == (
        "[  12.3s] round 1 (#3): utility +0.250 ± 0.031 | RM acc   -   | KL to r0 0.200 | EOS   -  % | distinct 99.8%"
        " | NLL@r0 1.700 | tokens 9.5 | RM score Δ +0.400, utility Δ -0.300 | health FAILED\n  FLAG: a\n  FLAG: b")
    assert format_round({**m, "gate": "kept"}).endswith("\n  GATE: kept")
