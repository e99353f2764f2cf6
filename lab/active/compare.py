"""Active vs random selection over the same labelling budget, measured (no database here).

Simulated labelers (utility + Gaussian noise) label ``batch`` prompts per round chosen at random or by the
reward model's uncertainty (``pair_uncertainty``); after every round a reward model is trained from scratch
on everything labelled so far and its accuracy on held-out prompts (ranked by the noise-free utility) is
recorded against the number of labelled comparisons.
"""
from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from annotation.errors import InvalidInput
from lab.scorers import reward_model_scorer
from preferences.tiers import tiers_from_scores


def pair_uncertainty(rewards: list[float]) -> float:
    """Mean of 4·p·(1−p), p = σ(r_i − r_j), over the C(K,2) pairs; 1 = the model cannot tell them apart.

    >>> pair_uncertainty([0.0, 0.0, 0.0])
    1.0
    >>> round(pair_uncertainty([0.0, 5.0]), 4)
    0.0266
    """
    pairs = list(combinations(rewards, 2))
    if not pairs:
        return 0.0
    total = 0.0
    for a, b in pairs:
        p = 1.0 / (1.0 + math.exp(-(a - b)))
        total += 4.0 * p * (1.0 - p)
    return total / len(pairs)


@dataclass(frozen=True)
class SimPrompt:
    prompt_id: int
    messages: list[dict]
    responses: list[str]
    utilities: list[float]  # noise-free utility of each response: the simulated labelers' taste


def _ranked(prompt: SimPrompt, scores: list[float], *, tie_threshold: float = 1e-9):
    from training.ml.types import RankedGroup

    tiers = tiers_from_scores(dict(enumerate(scores)), tie_threshold=tie_threshold)
    return RankedGroup(prompt_id=prompt.prompt_id, messages=prompt.messages, responses=prompt.responses,
                       rankings=[[sorted(tier) for tier in tiers]])


def _train_and_score(groups, held_out, pool, *, base_model: str, steps: int, seed: int, workdir: Path):
    """Train a reward model on ``groups``; return (held-out accuracy, {prompt id: uncertainty} of ``pool``)."""
    from training.ml.config import RewardConfig
    from training.ml.trainers.reward import train_reward_model
    from training.ml.types import NullHooks

    config = RewardConfig(base_model=base_model, seed=seed, max_steps=steps, batch_size=8, learning_rate=3e-3,
                          eval_every=steps, checkpoint_every=steps + 1, max_length=64, num_threads=0)
    summary = train_reward_model(config, groups, held_out, output_dir=workdir, hooks=NullHooks(), resume=False)
    scorer = reward_model_scorer(summary["model_dir"], max_length=64) if pool else None
    uncertainty = {p.prompt_id: pair_uncertainty(scorer(p.messages, p.responses)) for p in pool}
    return summary["final_eval"]["accuracy"], uncertainty


def compare_selection(
    prompts: list[SimPrompt], *, base_model: str, rounds: int = 5, batch: int = 16, noise: float = 0.3,
    eval_fraction: float = 0.25, steps: int = 40, seed: int = 0, log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Curves of held-out accuracy vs labelled comparisons for random and uncertainty selection."""
    rng = random.Random(seed)
    shuffled = list(prompts)
    rng.shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction))
    held_out = [_ranked(p, p.utilities) for p in shuffled[:n_eval]]
    pool_all = shuffled[n_eval:]
    if len(pool_all) < batch * rounds:
        raise InvalidInput(f"{len(pool_all)} prompts in the pool; {rounds} rounds of {batch} need "
                           f"{batch * rounds}", location="batch")
    noisy = {p.prompt_id: _ranked(p, [u + random.Random(f"{seed}:{p.prompt_id}:{i}").gauss(0, noise)
                                      for i, u in enumerate(p.utilities)]) for p in pool_all}
    curves = {}
    for strategy in ("random", "uncertainty"):
        labelled: list[SimPrompt] = []
        pool = list(pool_all)
        order_rng = random.Random(seed + 1)
        uncertainty: dict[int, float] = {}
        points = []
        for r in range(rounds):
            if strategy == "random" or not uncertainty:  # the first round has no model yet: random for both
                chosen = order_rng.sample(pool, batch)
            else:
                chosen = sorted(pool, key=lambda p: (-uncertainty[p.prompt_id], p.prompt_id))[:batch]
            labelled += chosen
            pool = [p for p in pool if p not in chosen]
            groups = [noisy[p.prompt_id] for p in labelled]
            comparisons = sum(len(g.pairs()) for g in groups)
            with tempfile.TemporaryDirectory() as workdir:
                accuracy, uncertainty = _train_and_score(
                    groups, held_out, pool if strategy == "uncertainty" else [], base_model=base_model,
                    steps=steps, seed=seed, workdir=Path(workdir))
            points.append({"round": r + 1, "prompts": len(labelled), "comparisons": comparisons,
                           "accuracy": round(accuracy, 4)})
            log(f"{strategy:<11} round {r + 1}: {len(labelled)} prompts, {comparisons} comparisons, "
                f"held-out accuracy {accuracy:.4f}")
        curves[strategy] = points
    return {"curves": curves, "held_out_prompts": len(held_out),
            "held_out_pairs": sum(len(g.pairs()) for g in held_out), **label_ratio(curves)}


def label_ratio(curves: dict) -> dict:
    """Comparisons active selection needed to reach random's final accuracy, divided by random's total."""
    target = curves["random"][-1]["accuracy"]
    spent = curves["random"][-1]["comparisons"]
    reached = next((p["comparisons"] for p in curves["uncertainty"] if p["accuracy"] >= target), None)
    return {"target_accuracy": target, "random_comparisons": spent, "active_comparisons_to_target": reached,
            "label_ratio": round(reached / spent, 4) if reached is not None and spent else None}
