"""Losses and metrics on hand-computed tensors."""
import math

import pytest
import torch

from training.ml.losses import bradley_terry_loss, mean_margin, pairwise_accuracy, reward_centering_loss


def test_bradley_terry_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2  # −log σ(d) = log(1 + e^−d)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_equal_rewards_give_log_two():
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_margin_is_subtracted_inside_the_sigmoid():
    loss = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), margins=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # d − m = 0


def test_weights_average_per_pair_losses():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    losses = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))]
    loss = bradley_terry_loss(chosen, rejected, weights=torch.tensor([3.0, 1.0]))
    assert loss.item() == pytest.approx((3 * losses[0] + losses[1]) / 4, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.tensor([0.5], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)  # σ(0) − 1


def test_centering_is_mean_square():
    assert reward_centering_loss(torch.tensor([1.0, -3.0])).item() == pytest.approx(5.0)


def test_accuracy_counts_ties_as_half_and_margin_is_mean_difference():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 1.0])
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx(2.5 / 4)
    assert mean_margin(chosen, rejected).item() == pytest.approx((1 - 1 + 0 + 4) / 4)
