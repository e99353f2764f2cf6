"""The pure-tensor RL helpers on tiny hand-computed tensors."""
import math

import pytest
import torch

from training.ml import rl


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-5)


def test_masked_mean_and_var_ignore_padding():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert rl.masked_mean(x, mask).item() == pytest.approx(3.0)  # (1+3+5)/3
    assert rl.masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])
    # values 1,3,5: mean 3, squared deviations 4,0,4 -> biased 8/3, unbiased 4
    assert rl.masked_var(x, mask, unbiased=False).item() == pytest.approx(8 / 3)
    assert rl.masked_var(x, mask).item() == pytest.approx(4.0)


def test_masked_whiten_zero_mean_unit_std_and_zero_padding():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    w = rl.masked_whiten(x, mask)
    close(w, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    kept = rl.masked_whiten(x, mask, shift_mean=False)
    close(kept, [[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]])


def test_gae_matches_hand_computation():
    # one sequence of 3 real tokens and one of 2 (+1 pad); γ=0.9, λ=0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = rl.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # seq 0: δ2 = 1 - 0.3 = 0.7; δ1 = 0 + .9*.3 - .2 = 0.07; δ0 = .9*.2 - .1 = 0.08
    a2 = 0.7
    a1 = 0.07 + 0.45 * a2
    a0 = 0.08 + 0.45 * a1
    # seq 1: δ1 = 2 - 1 = 1 (episode ends, the pad's V=9 is ignored); δ0 = .5 + .9*1 - 1 = 0.4
    b1 = 1.0
    b0 = 0.4 + 0.45 * b1
    close(adv, [[a0, a1, a2], [b0, b1, 0.0]])
    close(ret, [[a0 + 0.1, a1 + 0.2, a2 + 0.3], [b0 + 1.0, b1 + 1.0, 0.0]])


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 0.0]])
    adv, ret = rl.gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(ret, [[6.0, 5.0, 3.0]])
    close(adv, [[5.5, 4.75, 3.0]])


def test_group_advantages_normalise_within_each_group():
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
    adv = rl.group_advantages(rewards, group_size=2, eps=0.0 + 1e-12)
    s = math.sqrt(2.0)  # sample std of {1, 3}, of {2, 4}, of {6, 8}
    assert adv[:2].tolist() == pytest.approx([-1 / s, 1 / s])
    assert adv[2:4].tolist() == pytest.approx([0.0, 0.0])  # identical rewards: no signal, no NaN
    assert adv[4:].tolist() == pytest.approx([-1 / s, 1 / s, -1 / s, 1 / s])
    unscaled = rl.group_advantages(rewards, group_size=4, scale=False)
    assert unscaled.tolist() == pytest.approx([0.0, 2.0, -1.0, -1.0, -3.0, -1.0, 1.0, 3.0])


def test_group_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="group_size=3"):
        rl.group_advantages(torch.zeros(4), group_size=3)


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    # log r = ref - logp = [-log 2, log 2]; r = [0.5, 2]
    assert rl.kl_k1(logp, ref).tolist() == pytest.approx([math.log(2), -math.log(2)])
    assert rl.kl_k2(logp, ref).tolist() == pytest.approx([0.5 * math.log(2) ** 2] * 2)
    assert rl.kl_k3(logp, ref).tolist() == pytest.approx([0.5 - 1 + math.log(2), 2 - 1 - math.log(2)])
    assert (rl.kl_k3(logp, ref) >= 0).all()
    assert rl.kl_k3(ref, ref).abs().max().item() == 0.0


def test_kl_estimators_unbiased_in_expectation():
    # π = [0.7, 0.3], π_ref = [0.4, 0.6]: exact KL = Σ π log(π/π_ref); k1, k3 are unbiased
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    exact = (p * (p / q).log()).sum().item()
    for name in ("k1", "k3"):
        per_token = rl.KL_ESTIMATORS[name](p.log(), q.log())
        assert (p * per_token).sum().item() == pytest.approx(exact, abs=1e-6)


def test_kl_penalised_rewards_put_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, -5.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = rl.kl_penalised_rewards(torch.tensor([2.0, 3.0]), logp, ref, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -0.5], [0.0, -1.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 0.05 + 2.0], [0.0, 0.1 + 3.0, 0.0]])


def test_clip_fraction_counts_real_tokens_outside_the_band():
    ratio = torch.tensor([[1.0, 1.3, 0.7], [0.85, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert rl.clip_fraction(ratio, mask, clip_eps=0.2).item() == pytest.approx(2 / 4)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert rl.entropy_from_logits(logits).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_adaptive_kl_controller_moves_towards_target_and_is_clipped():
    ctl = rl.AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(current_kl=1.1, n_steps=10)  # error 0.1 -> β·(1 + 0.1·0.1)
    assert ctl.value == pytest.approx(0.1 * 1.01)
    ctl.update(current_kl=100.0, n_steps=100)  # error clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * 1.01 * 1.2)
    ctl.update(current_kl=0.0, n_steps=100)  # clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.01 * 1.2 * 0.8)
    fixed = rl.FixedKLController(0.3)
    fixed.update(10.0, 100)
    assert fixed.value == 0.3
