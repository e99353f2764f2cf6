"""Active selection: label first what teaches the reward model most, record the choice, and measure it.

Strategies (scores: higher = labelled first):
- ``random``: a seeded shuffle (the baseline);
- ``uncertainty``: the current reward model's doubt about a prompt's K responses, the mean over its pairs
  of 4·p·(1 − p) with p = σ(r_i − r_j) (Bradley-Terry win probability): 1 when all rewards are equal,
  near 0 when they are far apart;
- ``disagreement``: 1 − the mean pairwise agreement of the prompt's human rankings so far (0 with < 2 rankings).

``round_select`` writes a ``SelectionRecord`` (strategy, parameters, every score, the order) and one
``PromptPriority`` per prompt; ``prompt_available_for_labeler`` serves higher priorities first.

``compare_selection`` measures instead of claiming: simulated labelers (utility + Gaussian noise) label
``batch`` prompts per round chosen at random or by uncertainty; after every round a reward model is
trained from scratch on everything labelled so far (``train_reward_model``) and its accuracy on held-out
prompts (ranked by the noise-free utility) is recorded against the number of labelled comparisons.
"""
from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from django.db import transaction

from annotation.quality import metrics as quality
from annotation.errors import InvalidInput
from annotation.models import Prompt, Round
from annotation.provenance import HUMAN_SOURCES
from annotation.quality.models import PromptPriority, SelectionRecord
from preferences.tiers import tiers_from_scores

STRATEGIES = tuple(SelectionRecord.Strategy.values)  # ("random", "uncertainty", "disagreement")


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


def _round_prompts(round_: Round) -> list[Prompt]:
    return list(Prompt.objects.filter(round=round_).prefetch_related("samples").order_by("id"))


def disagreement_scores(*, round_: Round) -> dict[int, float]:
    from annotation.quality.selectors import ranking_records

    by_prompt: dict[int, list] = {}
    for record in ranking_records(project=round_.project, round_number=round_.number):
        if record.labeler_id is not None and record.source in HUMAN_SOURCES:  # people's disagreement only
            by_prompt.setdefault(record.prompt_id, []).append(record.tiers)
    scores = {}
    for prompt in Prompt.objects.filter(round=round_).values_list("id", flat=True):
        rankings = by_prompt.get(prompt, [])
        agreements = [quality.pairwise_agreement(a, b) for a, b in combinations(rankings, 2)]
        scores[prompt] = 1.0 - sum(agreements) / len(agreements) if agreements else 0.0
    return scores


def uncertainty_scores(*, prompts: list[Prompt], scorer: Callable[[list[dict], list[str]], list[float]]) -> dict:
    out = {}
    for prompt in prompts:
        samples = sorted(prompt.samples.all(), key=lambda s: s.position)
        out[prompt.pk] = pair_uncertainty(scorer(prompt.messages, [s.text for s in samples]))
    return out


CANNOT_ACT = "cannot act: "
UNCERTAINTY_MIN_SPREAD = 0.01  # scores closer than this do not order prompts meaningfully


def selection_notes(*, round_: Round, strategy: str, scores: dict[int, float]) -> list[str]:
    """What a researcher must know about a selection: when it cannot change what labelers get next (a note
    starting "cannot act: "), and when its scores barely differ."""
    values = list(scores.values())
    if strategy == "disagreement":
        disagreeing = [pk for pk, score in scores.items() if score > 0]
        if not disagreeing:
            return [CANNOT_ACT + "every prompt scores 0: no prompt has two human rankings that disagree yet (a "
                    "fresh round, or overlap 1); the queue stays in id order"]
        overlap = round_.project.overlap
        full = Prompt.objects.filter(pk__in=disagreeing, slots_taken__gte=overlap, is_gold=False).count()
        if full == len(disagreeing):
            return [CANNOT_ACT + f"all {full} disagreeing prompts have their {overlap} overlap slots filled, so no "
                    "labeler is served them again; raise the overlap or settle them in the review queue"]
        if full:
            return [f"{full} of the {len(disagreeing)} disagreeing prompts have all their slots filled and get no "
                    "more labels"]
    if strategy == "uncertainty" and values and max(values) - min(values) < UNCERTAINTY_MIN_SPREAD:
        return [f"scores span only {min(values):.4f}–{max(values):.4f}: the reward model barely separates the "
                "prompts (too little training?), so the order is close to arbitrary"]
    return []


def round_select(*, round_: Round, strategy: str, artifact_id: int | None = None, seed: int = 0,
                 user=None) -> SelectionRecord:
    """Score the round's prompts by ``strategy``, record the choice and set their queue priorities.

    ``params`` records ``notes`` (``selection_notes``) and ``can_act``: False when the strategy cannot change
    what labelers are served (disagreement on a fresh round, or with every disagreeing prompt full)."""
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {str(strategy)[:40]!r}; expected one of {STRATEGIES}", location="strategy")
    prompts = _round_prompts(round_)
    if not prompts:
        raise InvalidInput(f"round {round_.number} has no prompts", location="round")
    params: dict = {"seed": seed}
    if strategy == "random":
        order = [p.pk for p in prompts]
        random.Random(seed).shuffle(order)
        scores = {pk: float(len(order) - i) for i, pk in enumerate(order)}
    elif strategy == "disagreement":
        scores = disagreement_scores(round_=round_)
    else:
        from lab.ai_labelers import reward_artifact_get, reward_model_scorer
        from training.artifact_paths import artifact_dir

        if artifact_id is None:
            raise InvalidInput("uncertainty needs a reward model artifact id", location="artifact")
        artifact = reward_artifact_get(project=round_.project, spec=str(artifact_id))
        scorer = reward_model_scorer(artifact_dir(artifact=artifact),
                                     base_model=artifact.base_model if artifact.is_adapter else "")
        scores = uncertainty_scores(prompts=prompts, scorer=scorer)
        params["artifact"] = artifact.pk
    order = sorted(scores, key=lambda pk: (-scores[pk], pk))
    params["notes"] = selection_notes(round_=round_, strategy=strategy, scores=scores)
    params["can_act"] = not any(note.startswith(CANNOT_ACT) for note in params["notes"])
    with transaction.atomic():
        record = SelectionRecord.objects.create(round=round_, strategy=strategy, params=params,
                                                scores={str(k): round(v, 6) for k, v in scores.items()},
                                                order=order, created_by=user)
        PromptPriority.objects.filter(prompt__round=round_).delete()
        PromptPriority.objects.bulk_create(
            PromptPriority(prompt_id=pk, score=scores[pk], selection=record) for pk in order
        )
    return record


# ---- measured comparison: active vs random over the same labelling budget (no database below) ----

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
    from lab.ai_labelers import reward_model_scorer
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
