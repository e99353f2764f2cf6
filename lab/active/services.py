"""Writes of active selection: label first what teaches the reward model most, and record the choice.

Strategies (scores: higher = labelled first):
- ``random``: a seeded shuffle (the baseline);
- ``uncertainty``: the current reward model's doubt about a prompt's K responses, the mean over its pairs
  of 4·p·(1 − p) with p = σ(r_i − r_j) (Bradley-Terry win probability): 1 when all rewards are equal,
  near 0 when they are far apart;
- ``disagreement``: 1 − the mean pairwise agreement of the prompt's human rankings so far (0 with < 2 rankings).

``round_select`` writes a ``SelectionRecord`` (strategy, parameters, every score, the order) and one
``PromptPriority`` per prompt; ``prompt_available_for_labeler`` serves higher priorities first.

Reads (the scores, ``selection_notes``) are in ``lab.active.selectors``; ``lab.active.compare`` measures what
uncertainty selection saves against random (``compare_selection``).
"""
from __future__ import annotations

import random

from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Round
from annotation.quality.models import PromptPriority, SelectionRecord
from lab.active.selectors import (
    CANNOT_ACT, disagreement_scores, round_prompts_with_samples, selection_notes, uncertainty_scores,
)
from lab.ai_labelers.selectors import reward_artifact_get
from lab.scorers import reward_model_scorer
from training.artifact_paths import artifact_base_model, artifact_dir

STRATEGIES = tuple(SelectionRecord.Strategy.values)  # ("random", "uncertainty", "disagreement")


def round_select(*, round_: Round, strategy: str, artifact_id: int | None = None, seed: int = 0,
                 user=None) -> SelectionRecord:
    """Score the round's prompts by ``strategy``, record the choice and set their queue priorities.

    ``params`` records ``notes`` (``selection_notes``) and ``can_act``: False when the strategy cannot change
    what labelers are served (disagreement on a fresh round, or with every disagreeing prompt full)."""
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {str(strategy)[:40]!r}; expected one of {STRATEGIES}", location="strategy")
    prompts = round_prompts_with_samples(round_=round_)
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
        if artifact_id is None:
            raise InvalidInput("uncertainty needs a reward model artifact id", location="artifact")
        artifact = reward_artifact_get(project=round_.project, spec=str(artifact_id))
        scorer = reward_model_scorer(artifact_dir(artifact=artifact),
                                     base_model=artifact_base_model(artifact=artifact) if artifact.is_adapter else "")
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
