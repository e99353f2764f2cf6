"""The one simulated labeler: noisy utilities → tiers, reproducible from a seed."""
import doctest
import random

from preferences import simulated
from preferences.simulated import agreeing_pairs, noisy_scores, simulated_tiers
from preferences.tiers import tiers_from_scores


def test_doctests():
    assert doctest.testmod(simulated).failed == 0


def test_without_noise_the_ranking_is_the_utility_order_with_the_tie_rule():
    utilities = {7: 0.2, 8: 0.9, 9: 0.88, 10: -1.0}
    tiers = simulated_tiers(utilities, noise=0.0, tie_threshold=0.05, rng=random.Random(3))
    assert tiers == [[8, 9], [7], [10]] == tiers_from_scores(utilities, tie_threshold=0.05)
    assert agreeing_pairs(tiers, utilities) == (5, 5)


def test_noise_draws_one_gaussian_per_response_in_order_from_the_callers_rng():
    utilities = {1: 0.0, 2: 0.0, 3: 0.0}
    rng, reference = random.Random(11), random.Random(11)
    scores = noisy_scores(utilities, noise=0.5, rng=rng)
    assert scores == {item: reference.gauss(0.0, 0.5) for item in utilities}
    again = simulated_tiers(utilities, noise=0.5, tie_threshold=0.0, rng=random.Random(11))
    assert again == tiers_from_scores(scores, tie_threshold=0.0)


def test_heavy_noise_disagrees_with_the_utility_about_half_the_time():
    rng = random.Random(0)
    utilities = {i: i * 0.01 for i in range(6)}
    agreeing = total = 0
    for _ in range(300):
        a, n = agreeing_pairs(simulated_tiers(utilities, noise=10.0, tie_threshold=0.0, rng=rng), utilities)
        agreeing, total = agreeing + a, total + n
    assert 0.4 < agreeing / total < 0.6
