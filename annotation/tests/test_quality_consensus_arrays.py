"""The consensus rows and active selection's disagreement scores over arrays equal the per-prompt reference
(``ranking_records``, then ``figures.prompt_consensus`` / ``metrics.pairwise_agreement`` one prompt at a
time), on randomised projects."""
import json
import random
from itertools import combinations

import numpy as np
import pytest

from annotation.models import Prompt, Round
from annotation.provenance import HUMAN_SOURCES as PEOPLE_SOURCES
from annotation.quality import array_consensus
from annotation.quality import metrics as quality
from annotation.quality.array_consensus import consensus_strengths
from annotation.quality.arrays import MISSING, RankingTable, prompts_of
from annotation.quality.figures import HUMAN_SOURCES, prompt_consensus, records_by_prompt
from annotation.quality.models import LabelerReliability, PromptReview
from annotation.quality.selectors import consensus_rows, gold_maps, ranking_records
from annotation.quality.services import pair_weights_update, prompt_review
from annotation.tests.test_quality_arrays import _random_project, _random_tiers
from lab.active.selectors import disagreement_scores
from preferences.tiers import tier_map, tiers_from_map


def reference_consensus_rows(*, project, round_number=None):
    """``consensus_rows`` as it was before the arrays: records, then Bradley-Terry one prompt at a time."""
    records = [r for r in ranking_records(project=project, round_number=round_number) if r.source in HUMAN_SOURCES]
    gold = gold_maps(project=project)
    weights = dict(LabelerReliability.objects.filter(project=project).values_list("labeler_id", "weight"))
    adjudicated = dict(PromptReview.objects.filter(prompt__project=project, status=PromptReview.Status.ADJUDICATED)
                       .values_list("prompt_id", "tiers"))
    grouped = records_by_prompt(records)
    for prompt_id, messages, number in Prompt.objects.filter(pk__in=list(grouped)).order_by("id").values_list(
            "id", "messages", "round__number"):
        result = prompt_consensus(records=grouped[prompt_id], weights=weights)
        basis = "bradley_terry"
        if prompt_id in adjudicated:
            result["tiers"], basis = tier_map(adjudicated[prompt_id]), "adjudicated"
        elif prompt_id in gold:
            result["tiers"], basis = gold[prompt_id], "gold"
        by_tier = dict(sorted(result["tiers"].items(), key=lambda kv: (kv[1], kv[0])))
        yield {
            "prompt_id": prompt_id, "round": number, "messages": messages, "basis": basis,
            "consensus_tiers": tiers_from_map(by_tier),
            "strengths": {str(k): round(v, 4) for k, v in sorted(result["strengths"].items())},
            "rankings": len(grouped[prompt_id]), "ranking_ids": [r.ranking_id for r in grouped[prompt_id]],
        }


def reference_disagreement_scores(*, round_):
    """``disagreement_scores`` as it was before the arrays."""
    by_prompt: dict[int, list] = {}
    for record in ranking_records(project=round_.project, round_number=round_.number):
        if record.labeler_id is not None and record.source in PEOPLE_SOURCES:
            by_prompt.setdefault(record.prompt_id, []).append(record.tiers)
    scores = {}
    for prompt in Prompt.objects.filter(round=round_).values_list("id", flat=True):
        agreements = [quality.pairwise_agreement(a, b) for a, b in combinations(by_prompt.get(prompt, []), 2)]
        scores[prompt] = 1.0 - sum(agreements) / len(agreements) if agreements else 0.0
    return scores


def _lines(rows) -> list[str]:
    return [json.dumps(row) for row in rows]


@pytest.mark.parametrize("seed", [31, 32])
def test_consensus_rows_over_arrays_are_the_reference_rows(seed, make_user, make_project, monkeypatch):
    """Weights from the reliability pass, an adjudicated prompt, gold prompts, a late fifth sample, exclusions,
    two rounds; AI, arena and excluded rankings left out: the same JSON lines, per round and overall."""
    project = _random_project(seed, make_user, make_project)
    pair_weights_update(project=project)
    weights = set(LabelerReliability.objects.filter(project=project).values_list("weight", flat=True))
    reviewed = set(PromptReview.objects.values_list("prompt_id", flat=True))
    prompt = next(p for p in Prompt.objects.filter(project=project, is_gold=False).order_by("id")
                  if p.pk not in reviewed and p.rankings.exists())
    ids = list(prompt.samples.order_by("id").values_list("id", flat=True))
    prompt_review(prompt=prompt, tiers=[ids[::-1]])
    for round_number in (None, 1, 2):
        expected = _lines(reference_consensus_rows(project=project, round_number=round_number))
        assert _lines(consensus_rows(project=project, round_number=round_number)) == expected
    rows = list(consensus_rows(project=project))
    assert {row["basis"] for row in rows} == {"bradley_terry", "gold", "adjudicated"} and len(weights) > 2
    assert any(len(row["strengths"]) == 5 for row in rows) and max(row["rankings"] for row in rows) >= 7
    monkeypatch.setattr(array_consensus, "CHUNK_PROMPTS", 3)  # a few prompts per fit: the same rows
    assert _lines(consensus_rows(project=project)) == _lines(reference_consensus_rows(project=project))


@pytest.mark.parametrize("seed", [31, 33])
def test_disagreement_scores_over_arrays_are_the_reference_scores(seed, make_user, make_project):
    project = _random_project(seed, make_user, make_project)
    for round_ in Round.objects.filter(project=project):
        got = disagreement_scores(round_=round_)
        assert list(got.items()) == list(reference_disagreement_scores(round_=round_).items())  # to the last bit
        assert len([score for score in got.values() if score > 0]) >= 3


def _synthetic_table(rng: random.Random, n_prompts: int) -> tuple[RankingTable, list[list[dict]]]:
    """Prompts of 1–6 samples ranked 1–7 times with ties; some rankings leave a sample out. Sample ids are
    3- and 4-digit in one prompt, so their repr order is not their numeric order."""
    rows, entries, maps = [], [], []
    for p in range(n_prompts):
        u = rng.randint(1, 6)
        samples = rng.sample(range(950, 1050), u)
        maps.append([])
        for _ in range(rng.randint(1, 7)):
            ranked = samples if rng.random() < 0.8 or u < 3 else rng.sample(samples, u - 1)
            tiers = tier_map(_random_tiers(rng, ranked))
            shown = dict(zip(ranked, rng.sample(range(len(ranked)), len(ranked))))
            in_order = sorted(ranked, key=lambda s: (tiers[s], shown[s]))  # RankingEntry's ordering
            entries.extend((len(rows), s, tiers[s], shown[s]) for s in in_order)
            maps[-1].append({s: tiers[s] for s in in_order})  # a RankingRecord's tiers, as ranking_records fills them
            rows.append((len(rows) + 1, p + 1))
    column = lambda values: np.array(values, np.int64)  # noqa: E731
    n = len(rows)
    table = RankingTable(ranking_id=column([r[0] for r in rows]), prompt_id=column([r[1] for r in rows]),
                         round_number=np.ones(n, np.int64), labeler_id=np.arange(1, n + 1),
                         source=np.zeros(n, np.int64), time_spent_ms=np.zeros(n, np.int64), day=np.zeros(n, np.int64),
                         entry_row=column([e[0] for e in entries]), entry_sample=column([e[1] for e in entries]),
                         entry_tier=column([e[2] for e in entries]), entry_shown=column([e[3] for e in entries]),
                         sources=("human",))
    return table, maps


def _printed(strengths: dict) -> str:
    return json.dumps({str(k): round(v, 4) for k, v in sorted(strengths.items())})


def test_batched_bradley_terry_is_metrics_consensus():
    """Without a database, 1,500 prompts of every shape, weighted: the strengths within 1e-12 of the
    reference's (not all to the last bit: numpy's log and exp differ from libm's in the last place for some
    values), the same text at the printed 4 decimals, and the same tiers."""
    rng = random.Random(5)
    table, maps = _synthetic_table(rng, 1_500)
    weight = np.array([rng.choice([1.0, 0.37, 0.8125, 1.6, 0.05]) for _ in range(len(table))])
    prompts = prompts_of(table)
    strengths = consensus_strengths(prompts, weight)
    worst, compared = 0.0, 0
    for block, fitted in zip(prompts.blocks, strengths):
        for p, prompt in enumerate(block.prompts.tolist()):
            rows = block.rows[p].tolist()
            expected = quality.consensus([maps[prompt][k] for k in range(len(rows))], weight[rows].tolist())
            got = dict(zip(block.samples[p].tolist(), fitted[p].tolist()))
            assert got.keys() == expected["strengths"].keys()
            worst = max(worst, max(abs(got[s] - v) for s, v in expected["strengths"].items()))
            assert _printed(got) == _printed(expected["strengths"])  # as consensus_rows prints them, -0.0 too
            assert quality.tiers_from_strengths(got) == expected["tiers"]
            compared += 1
    assert compared == 1_500 and worst < 1e-12
    assert any((block.tiers == MISSING).any() for block in prompts.blocks)


def test_project_without_rankings_has_no_rows(make_user, make_project):
    project = make_project(slug="quiet", k=3, prompts=2, labelers=[make_user("alice")])
    assert list(consensus_rows(project=project)) == [] == list(reference_consensus_rows(project=project))
    assert disagreement_scores(round_=Round.objects.get(project=project)) == reference_disagreement_scores(
        round_=Round.objects.get(project=project))
