"""The quality report over arrays gives exactly the report of the per-prompt reference
(``annotation.quality.figures`` over ``ranking_records``), on randomised projects."""
import hashlib
import json
import math
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from django.db import connection

from annotation.models import Prompt, Ranking, Round, Sample
from annotation.quality import array_figures, arrays
from annotation.quality import metrics as quality
from annotation.quality.array_figures import alpha_units, coincidences
from annotation.quality.arrays import fsums, prompts_of, round4
from annotation.quality.figures import (
    HUMAN_SOURCES, agreement_summary, labeler_rows_weighted, records_by_prompt, review_queue, timeline,
)
from annotation.quality.selectors import (
    AI_SOURCES, gold_maps, quality_report, quality_settings_get, quality_sources, quality_warnings, ranking_records,
)
from annotation.quality.models import PromptReview
from annotation.quality.ranking_table import ranking_table
from annotation.quality.services import gold_set, prompt_review, quality_settings_update, ranking_exclude
from annotation.services import ranking_record


def reference_report(*, project, round_number=None, sources="human") -> dict:
    """The report as ``quality_report`` assembled it before the arrays: the reference figures over records."""
    included = quality_sources(sources)
    settings = quality_settings_get(project=project)
    everyone = ranking_records(project=project, round_number=round_number)
    records = [r for r in everyone if r.source in included]
    gold = gold_maps(project=project)
    rounds = sorted({r.round_number for r in records})
    reviewed = set(PromptReview.objects.filter(prompt__project=project).values_list("prompt_id", flat=True))
    left_out = Counter(r.source for r in everyone if r.source not in included)
    return {
        "project": project.slug, "round": round_number,
        "sources": {"choice": sources or "human", "included_sources": sorted(included),
                    "left_out": dict(sorted(left_out.items()))},
        "settings": settings,
        "warnings": quality_warnings(project=project, settings=settings, gold_prompts=len(gold)),
        "excluded_rankings": Ranking.objects.filter(prompt__project=project, exclusion__isnull=False).count(),
        "gold_prompts": len(gold),
        "overall": agreement_summary(records),
        "rounds": [{"round": n, **agreement_summary([r for r in records if r.round_number == n])} for n in rounds],
        "labelers": labeler_rows_weighted([r for r in everyone if r.source in HUMAN_SOURCES | AI_SOURCES], gold,
                                          settings),
        "timeline": timeline(records),
        "review_queue": review_queue(records=records, threshold=settings["review_threshold"], reviewed=reviewed,
                                     gold=set(gold)),
    }


def _random_tiers(rng: random.Random, sample_ids: list[int]) -> list[list[int]]:
    """A random order with ties: each sample draws one of up to K tier labels, empty labels dropped."""
    labels = {s: rng.randrange(len(sample_ids)) for s in sample_ids}
    return [[s for s in sample_ids if labels[s] == t] for t in sorted(set(labels.values()))]


def _add_prompt(project, rnd, k: int, n: int) -> Prompt:
    prompt = Prompt.objects.create(project=project, round=rnd, messages=[{"role": "user", "content": f"Q{n}?"}])
    for j in range(k):
        _add_sample(prompt, j, f"Answer {j} to {n}.")
    return prompt


def _add_sample(prompt, position: int, text: str) -> None:
    Sample.objects.create(prompt=prompt, text=text, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                          position=position, model_name="fixture")


def _rank(rng, prompt, labeler, source) -> Ranking:
    ids = list(prompt.samples.values_list("id", flat=True))
    shown = rng.sample(ids, len(ids))
    return ranking_record(prompt=prompt, labeler=labeler, tiers=_random_tiers(rng, ids), source=source,
                          time_spent_ms=rng.choice([0, 800, 2_000, 15_000, 30_000, 31_000, 60_000]), shown_order=shown)


def _random_project(seed: int, make_user, make_project):
    """Two rounds (K=4, and K=5 in part of round 2), 7 humans, 2 AI labelers, imported and arena rankings,
    gold prompts ranked by everyone, a sample added after some rankings, exclusions, a reviewed prompt,
    rankings spread over five days."""
    rng = random.Random(seed)
    humans = [make_user(f"h{seed}-{i}") for i in range(7)]
    machines = [make_user(f"ai{seed}-{i}") for i in range(2)]
    researcher, voter = make_user(f"res{seed}"), make_user(f"voter{seed}")
    project = make_project(slug=f"rand{seed}", k=4, overlap=3, prompts=16, labelers=humans + machines,
                           researchers=[researcher])
    second = Round.objects.create(project=project, number=2, status=Round.Status.OPEN)
    for n in range(12):
        _add_prompt(project, second, 5 if n % 3 == 0 else 4, 100 + n)
    prompts = list(project.prompts.order_by("id"))
    for prompt in prompts[:3] + prompts[16:18]:  # gold prompts
        gold_set(prompt=prompt, tiers=_random_tiers(rng, list(prompt.samples.values_list("id", flat=True))))
    rankings = []
    for index, prompt in enumerate(prompts):
        gold = index in (0, 1, 2, 16, 17)
        raters = humans if gold else rng.sample(humans, rng.choice([0, 1, 1, 2, 3, 3, 4]))
        for labeler in raters:
            source = "gold" if gold else rng.choice(["human", "human", "simulated"])
            rankings.append(_rank(rng, prompt, labeler, source))
        for machine in machines:
            if rng.random() < 0.5:
                rankings.append(_rank(rng, prompt, machine, "ai"))
        if rng.random() < 0.3:
            rankings.append(_rank(rng, prompt, None, "imported"))
        if rng.random() < 0.15:
            rankings.append(_rank(rng, prompt, voter, "arena"))
        if index == 5:  # a response added after the rankings so far (committed, as in production): rank four of five
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:  # run the deferred coverage checks of the rankings so far
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                    cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            _add_sample(prompt, 4, "A late answer.")
            rankings.append(_rank(rng, prompt, researcher, "human"))
    for ranking in rng.sample(rankings, 4):
        ranking_exclude(project=project, ranking_id=ranking.pk, user=researcher, reason="test")
    start = datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc)
    for ranking in rankings:
        Ranking.objects.filter(pk=ranking.pk).update(created_at=start + timedelta(hours=rng.randrange(5 * 24)))
    queued = reference_report(project=project)["review_queue"]
    if queued:
        prompt_review(prompt=Prompt.objects.get(pk=queued[0]["prompt_id"]), user=researcher)
    quality_settings_update(project=project, gold_rate=0.2, review_threshold=0.6, speed_ratio=0.3)
    return project


def _dump(report: dict) -> str:
    return json.dumps(report, default=str)  # compares types too: 30000 is not 30000.0


@pytest.mark.parametrize("seed", [11, 12])
def test_report_over_arrays_is_the_reference_report(seed, make_user, make_project, monkeypatch):
    project = _random_project(seed, make_user, make_project)
    for sources in ("human", "both"):
        for round_number in (None, 1, 2):
            expected = reference_report(project=project, round_number=round_number, sources=sources)
            assert _dump(quality_report(project=project, round_number=round_number, sources=sources)) == _dump(expected)
    report = quality_report(project=project)
    assert report["labelers"] and report["review_queue"] and report["gold_prompts"] == 5
    assert report["sources"]["left_out"].get("ai") and report["excluded_rankings"] == 4
    monkeypatch.setattr(arrays, "CHUNK_ELEMENTS", 50)  # a few prompts per chunk: the same report
    assert _dump(quality_report(project=project, sources="both")) == _dump(reference_report(project=project,
                                                                                            sources="both"))


def test_arrays_and_orm_read_the_same_table(make_user, make_project, on_postgresql):
    project = _random_project(13, make_user, make_project)
    by_arrays = ranking_table(project=project, use_arrays=True)
    by_orm = ranking_table(project=project, use_arrays=False)
    for name in ("ranking_id", "prompt_id", "round_number", "labeler_id", "source", "time_spent_ms", "day",
                 "entry_row", "entry_sample", "entry_tier", "entry_shown"):
        assert np.array_equal(getattr(by_arrays, name), getattr(by_orm, name)), name
    assert len(by_arrays) == len(ranking_records(project=project)) and by_arrays.usernames == by_orm.usernames


def test_fsums_is_math_fsum_per_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 50, 20_000)
    tiny = np.tanh(rng.normal(size=20_000)) * 2.0 ** -rng.integers(0, 40, 20_000)  # too many binary orders: fallback
    for values in (rng.integers(0, 7, 20_000) / 6, np.tanh(rng.normal(size=20_000)), tiny,
                   rng.choice([1 / 3, -0.5, 0.1, 1.0], 20_000)):
        expected = [math.fsum(values[groups == g].tolist()) for g in range(51)]
        assert fsums(values, groups, 51).tolist() == expected


def _reference_units(records) -> list[list]:
    """The α units of ``figures.agreement_summary``, as it builds them."""
    units = []
    for prompt_records in records_by_prompt([r for r in records if r.labeler_id is not None]).values():
        if len(prompt_records) >= 2:
            ranks = [quality.mid_ranks(r.tiers) for r in prompt_records]
            units.extend([rank.get(sample) for rank in ranks] for sample in prompt_records[0].tiers)
    return units


@pytest.mark.parametrize("seed", [21, 22])
def test_alpha_coincidences_are_the_reference_matrix_in_its_order(seed, make_user, make_project, monkeypatch):
    """The same matrix, key for key, in the same insertion order, so α is equal to the last bit: over the prompts
    of ≤ 3 rankings (1/(m − 1) exact, counted) and over all, where the gold prompts' 7 rankings add 1/6 and
    others 1/3 per value pair (summed one at a time, in a few steps here)."""
    project = _random_project(seed, make_user, make_project)
    table = ranking_table(project=project)
    prompts = prompts_of(table)
    members = table.source_in(HUMAN_SOURCES) & (table.labeler_id != 0)
    units = alpha_units(table, prompts, members)
    records = [r for r in ranking_records(project=project) if r.source in HUMAN_SOURCES]
    labelled = Counter(r.prompt_id for r in records if r.labeler_id is not None)
    small = {p for p, n in labelled.items() if n <= 3}
    pick = np.isin(prompts.ids[prompts.of_row[units.order >> 20]], sorted(small))
    expected = quality._coincidences(_reference_units([r for r in records if r.prompt_id in small]))
    got = coincidences(units, pick, prompts.blocks, members)
    assert list(got.items()) == list(expected.items()) and len(got) > 10
    monkeypatch.setattr(array_figures._sequential_sum, "__defaults__", (7,))
    every = coincidences(units, np.ones(len(units.order), bool), prompts.blocks, members)
    assert list(every.items()) == list(quality._coincidences(_reference_units(records)).items())
    assert max(labelled.values()) >= 7 and sorted(set(labelled.values()))[-2] >= 4


def test_round4_is_pythons_round():
    rng = np.random.default_rng(1)
    halves = (rng.integers(0, 20_000, 5_000) + 0.5) / 1e4  # 4-decimal halves, the hard cases
    values = np.concatenate([rng.random(20_000), -rng.random(2_000), halves, rng.integers(0, 7, 1_000) / 6])
    assert round4(values).tolist() == [round(v, 4) for v in values.tolist()]


def test_empty_and_single_ranking_projects(make_user, make_project):
    alice = make_user("alice")
    project = make_project(slug="few", k=3, prompts=2, labelers=[alice])
    assert _dump(quality_report(project=project)) == _dump(reference_report(project=project))
    _rank(random.Random(0), project.prompts.first(), alice, "human")
    assert _dump(quality_report(project=project)) == _dump(reference_report(project=project))
    assert quality_report(project=project)["labelers"][0]["rankings"] == 1
