"""The simulated labeler: the one way a scripted labeler turns utilities into a ranking.

It scores each response by its utility plus Gaussian noise N(0, noise²) — one draw per response, in the
order given, from the caller's ``random.Random`` (so a seed fixes the rankings) — and groups the noisy
scores into tiers with ``preferences.tiers.tiers_from_scores`` (its tie rule). The web app's scripted
labelers (``annotation.simulation``), the Django loop (``training.loop``) and the pure loop
(``training.ml.loop``) all rank this way.

    >>> import random
    >>> simulated_tiers({10: 1.0, 11: 0.0, 12: 0.5}, noise=0.0, tie_threshold=0.0, rng=random.Random(0))
    [[10], [12], [11]]
"""
from __future__ import annotations

import random
from collections.abc import Hashable, Mapping
from typing import TypeVar

from preferences.tiers import pairs_from_tiers, tiers_from_scores

Item = TypeVar("Item", bound=Hashable)


def noisy_scores(utilities: Mapping[Item, float], *, noise: float, rng: random.Random) -> dict[Item, float]:
    """Each utility plus one N(0, noise²) draw, in the mapping's order (noise 0: the utilities themselves)."""
    return {item: utility + rng.gauss(0.0, noise) for item, utility in utilities.items()}


def simulated_tiers(utilities: Mapping[Item, float], *, noise: float, tie_threshold: float,
                    rng: random.Random) -> list[list[Item]]:
    """One simulated labeler's ranking of one prompt's responses: noisy utilities → tiers, best first."""
    return tiers_from_scores(noisy_scores(utilities, noise=noise, rng=rng), tie_threshold=tie_threshold)


def agreeing_pairs(tiers, utilities: Mapping[Item, float]) -> tuple[int, int]:
    """(pairs whose chosen item has the higher noise-free utility, pairs) of a simulated ranking.

    >>> agreeing_pairs([[10], [11, 12]], {10: 1.0, 11: 0.0, 12: 2.0})
    (1, 2)
    """
    pairs = pairs_from_tiers(tiers)
    return sum(utilities[chosen] > utilities[rejected] for chosen, rejected, _ in pairs), len(pairs)
