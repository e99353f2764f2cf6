"""The lease window (``prompt_lease_candidates(window=W)``, what every fetch runs) is exactly the first W of
all candidates in serving order, however the project's prompts are spread over open rounds, slot levels,
priorities, gold, expired leases and the labeler's own leases and rankings."""
import random
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.models import Assignment, Prompt, Ranking, RankingEntry, Round, Sample
from annotation.quality.models import PromptPriority, SelectionRecord
from annotation.selectors import prompt_lease_candidates

OVERLAP = 3


def _messy_project(make_project, make_user, *, seed: int):
    """Four rounds (1, 2 and 4 open, 3 closed) of prompts at every slot level, some prioritised, some gold,
    some with an expired lease, some leased or ranked by ann."""
    rng = random.Random(seed)
    ann, ben = make_user("ann"), make_user("ben")
    project = make_project(k=2, overlap=OVERLAP, prompts=0, labelers=[ann, ben])
    now = timezone.now()
    rounds = [project.rounds.get()] + [
        Round.objects.create(project=project, number=n, status=Round.Status.CLOSED if n == 3 else Round.Status.OPEN)
        for n in (2, 3, 4)]
    rng.shuffle(rounds)  # ids no longer follow round numbers
    for rnd in rounds:
        selection = SelectionRecord.objects.create(round=rnd, strategy=SelectionRecord.Strategy.UNCERTAINTY)
        for _ in range(rng.randint(15, 30)):
            prompt = Prompt.objects.create(project=project, round=rnd, messages=[{"role": "user", "content": "Q?"}],
                                           is_gold=rng.random() < 0.15, slots_taken=rng.randint(0, OVERLAP))
            for position in range(2):
                Sample.objects.create(prompt=prompt, text=f"A{position}", text_sha256=f"{prompt.pk}-{position}",
                                      position=position, model_name="t")
            if rng.random() < 0.25:
                PromptPriority.objects.create(prompt=prompt, selection=selection, score=rng.choice([0.5, 1.0, 2.0]))
            if prompt.slots_taken == OVERLAP and rng.random() < 0.5:  # full, but one lease has expired
                Prompt.objects.filter(pk=prompt.pk).update(lease_expires_min=now - timedelta(minutes=5))
            draw = rng.random()
            if draw < 0.1:
                Assignment.objects.create(prompt=prompt, labeler=ann, shown_order=[], expires_at=now + timedelta(hours=1))
            elif draw < 0.15:
                ranking = Ranking.objects.create(prompt=prompt, labeler=ann, source=Ranking.Source.HUMAN)
                for tier, sample in enumerate(prompt.samples.order_by("position")):
                    RankingEntry.objects.create(ranking=ranking, sample=sample, tier=tier, shown_position=tier)
    return project, ann, now


@pytest.mark.django_db
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gold", [None, True, False])
@pytest.mark.parametrize("window", [1, 5, 64])
def test_window_is_the_head_of_all_candidates_in_serving_order(make_project, make_user, seed, gold, window):
    project, ann, now = _messy_project(make_project, make_user, seed=seed)
    everything = list(prompt_lease_candidates(project=project, labeler=ann, now=now, gold=gold)
                      .values_list("id", flat=True))
    assert len(everything) > window or window == 64  # the window cuts something off
    windowed = list(prompt_lease_candidates(project=project, labeler=ann, now=now, gold=gold, window=window)
                    .values_list("id", flat=True))
    assert windowed == everything[:window]
    numbers = list(Prompt.objects.filter(pk__in=everything).values_list("round__number", flat=True).distinct())
    assert set(numbers) == {1, 2, 4}  # every open round has candidates; the closed one none


@pytest.mark.django_db
@pytest.mark.parametrize("seed", [0, 1])
def test_an_ai_labelers_window_ignores_the_overlap_and_follows_serving_order(make_project, make_user, seed):
    project, _, now = _messy_project(make_project, make_user, seed=seed)
    bot = make_user("bot")
    everything = list(prompt_lease_candidates(project=project, labeler=bot, now=now, ai=True).values_list("id", flat=True))
    windowed = list(prompt_lease_candidates(project=project, labeler=bot, now=now, ai=True, window=7)
                    .values_list("id", flat=True))
    assert windowed == everything[:7]
    full = Prompt.objects.filter(project=project, slots_taken=OVERLAP, round__status=Round.Status.OPEN)
    assert set(full.values_list("id", flat=True)) <= set(everything)  # full prompts stay candidates for the AI
