"""Active vs random selection over the same labelling budget, measured (no database here).

Simulated labelers (utility + Gaussian noise) label ``batch`` prompts per round chosen at random or by the
reward model's uncertainty (``pair_uncertainty``); after every round a reward model is trained from scratch
on everything labelled so far and its accuracy on held-out prompts (ranked by the noise-free utility) is
recorded against the number of labelled comparisons. ``compare_selection_seeds`` repeats that over seeds and
``aggregate_seeds`` gives each curve's mean ± standard error and the measured saving: the labels active
selection needed to reach random's final accuracy.
"""
from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from statistics import fmean

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
                          group_lr_scaling=False,  # the strategy evidence was measured with the rate as given
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


WIN_MARGIN_SE = 2.0  # active "wins" when its mean paired saving minus this many standard errors is above zero


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / √n; 0 for a single value).

    >>> mean, se = mean_se([1.0, 2.0, 3.0])
    >>> mean, round(se, 4)  # sd 1, n 3: 1/√3
    (2.0, 0.5774)
    """
    if not values:
        raise ValueError("mean_se of no values")
    mean = fmean(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def label_saving(run: dict) -> float:
    """Fraction of random's labels active selection did not need to reach random's final accuracy in one run
    (``label_ratio``'s figures); 0 when it never reached it, an upper bound: it needed at least all of them.
    Never below 0, so a strategy no better than random still "saves" on average: the verdict uses
    ``paired_saving``."""
    reached = run["active_comparisons_to_target"]
    return 1.0 - reached / run["random_comparisons"] if reached is not None and run["random_comparisons"] else 0.0


def _labels_to_reach(points: list[dict], target: float) -> float:
    return next(p["comparisons"] for p in points if p["accuracy"] >= target)


def paired_saving(run: dict) -> float:
    """(Labels random needed − labels active needed) to reach the lower of the two final accuracies, as a
    fraction of random's total: both reach it, and swapping the strategies negates it, so a strategy no better
    than random scores 0 on average and a worse one below 0."""
    random_points, active_points = run["curves"]["random"], run["curves"]["uncertainty"]
    target = min(random_points[-1]["accuracy"], active_points[-1]["accuracy"])
    spent = random_points[-1]["comparisons"]
    return (_labels_to_reach(random_points, target) - _labels_to_reach(active_points, target)) / spent


def savings_summary(runs: list[dict]) -> dict:
    """Over ``runs`` (mean ± standard error): ``label_saving`` (with how many runs reached random's final
    accuracy and the labels they needed), ``paired_saving`` and the final-accuracy gap active − random; active
    wins with at least two runs and mean paired saving − WIN_MARGIN_SE standard errors > 0."""
    saving, saving_se = mean_se([label_saving(run) for run in runs])
    paired, paired_se = mean_se([paired_saving(run) for run in runs])
    gap, gap_se = mean_se([run["curves"]["uncertainty"][-1]["accuracy"] - run["curves"]["random"][-1]["accuracy"]
                           for run in runs])
    reached = [run["active_comparisons_to_target"] for run in runs if run["active_comparisons_to_target"] is not None]
    return {"n_runs": len(runs), "reached": len(reached), "labels_to_reach": fmean(reached) if reached else None,
            "random_comparisons": fmean(run["random_comparisons"] for run in runs),
            "saving": saving, "saving_se": saving_se, "paired_saving": paired, "paired_saving_se": paired_se,
            "final_gap": gap, "final_gap_se": gap_se,
            "wins": len(runs) >= 2 and paired - WIN_MARGIN_SE * paired_se > 0}  # one run shows no spread


def aggregate_seeds(runs: list[dict]) -> dict:
    """Each strategy's curve as mean ± standard error over the seeds' ``compare_selection`` results (same rounds),
    random's final accuracy (the target) likewise, and ``savings_summary``."""
    curves = {}
    for strategy in ("random", "uncertainty"):
        rows = []
        for points in zip(*(run["curves"][strategy] for run in runs), strict=True):  # one round, every seed
            accuracy, se = mean_se([p["accuracy"] for p in points])
            rows.append({"round": points[0]["round"], "comparisons": fmean(p["comparisons"] for p in points),
                         "accuracy": accuracy, "se": se})
        curves[strategy] = rows
    target, target_se = mean_se([run["target_accuracy"] for run in runs])
    return {"curves": curves, "target_accuracy": target, "target_se": target_se,
            "held_out_prompts": runs[0]["held_out_prompts"], **savings_summary(runs)}


def demo_task_prompts(n: int, k: int, seed: int, utility: Callable[[list[dict], str], float]) -> list[SimPrompt]:
    """``n`` story prompts of the training demo task, each with ``k`` distinct demonstration-style replies
    scored by ``utility``."""
    from training.ml import demo_task

    rng, out = random.Random(seed), []
    for i in range(n):
        messages = demo_task.demo_prompt(rng.choice(demo_task.NOUNS))
        noun = messages[0]["content"].split()[-1].rstrip(".")
        texts: list[str] = []
        while len(texts) < k:
            text = demo_task.demonstration_text(rng, noun)
            if text not in texts:
                texts.append(text)
        out.append(SimPrompt(i, messages, texts, [float(utility(messages, t)) for t in texts]))
    return out


def tiny_reward_base(prompts: list[SimPrompt], root: Path, *, seed: int) -> Path:
    """A from-scratch 1-layer reward model (hidden 32) with a BPE tokenizer fitted on the prompts' texts."""
    from training.ml.tiny_models import build_tiny_reward_model, build_tokenizer

    texts = [m["content"] for p in prompts for m in p.messages] + [t for p in prompts for t in p.responses]
    tokenizer = build_tokenizer(texts, root / "tokenizer", vocab_size=512)
    return build_tiny_reward_model(root / "base", tokenizer, hidden=32, layers=1, heads=2, seed=seed)


def compare_selection_seeds(
    prompts_for: Callable[[int], list[SimPrompt]], *, seeds: list[int], rounds: int = 5, batch: int = 16,
    noise: float = 0.3, steps: int = 40, log: Callable[[str], None] = lambda m: None,
) -> dict:
    """``compare_selection`` once per seed (prompts ``prompts_for(seed)``, a fresh tiny base model each),
    aggregated by ``aggregate_seeds``; ``runs`` keeps every seed's result."""
    runs = []
    for seed in seeds:
        prompts = prompts_for(seed)
        with tempfile.TemporaryDirectory() as tmp:
            base = tiny_reward_base(prompts, Path(tmp), seed=seed)
            run = compare_selection(prompts, base_model=str(base), rounds=rounds, batch=batch, noise=noise,
                                    steps=steps, seed=seed, log=lambda m, s=seed: log(f"seed {s} {m}"))
        reached = run["active_comparisons_to_target"]
        log(f"seed {seed} done: random final {run['target_accuracy']:.4f}, active final "
            f"{run['curves']['uncertainty'][-1]['accuracy']:.4f}, active reached random's final "
            + (f"at {reached} comparisons" if reached is not None else "never"))
        runs.append(run)
    return {**aggregate_seeds(runs), "runs": runs}
