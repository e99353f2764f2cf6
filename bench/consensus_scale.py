"""The consensus export's rows and active selection's disagreement scores, on a database filled by
``bench/scale_store.py``: the array path against the per-prompt reference, in the same run.

    .venv/bin/python bench/consensus_scale.py --db rlhf_scale_cons                   # both paths, ratio, equality
    .venv/bin/python bench/consensus_scale.py --db rlhf_scale_cons --path arrays --split  # its steps too

``reference`` is what both did before: every ranking as a ``RankingRecord`` (``selectors.ranking_records``),
then per prompt ``figures.prompt_consensus`` (Bradley-Terry by ``metrics.bradley_terry``) or
``metrics.pairwise_agreement``. Wall and CPU seconds of each, their ratio, whether the outputs are equal
(the rows as JSON text), then the peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def timed(name: str, fn, *args, **kwargs):
    started, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    wall = time.perf_counter() - started
    print(f"{name:40s} {wall:8.2f} s wall {time.process_time() - cpu:8.2f} s CPU", flush=True)
    return result, wall


def reference_consensus_rows(*, project, round_number=None):
    """``selectors.consensus_rows`` as it was: records, then Bradley-Terry one prompt at a time."""
    from annotation.models import Prompt
    from annotation.quality.figures import HUMAN_SOURCES, prompt_consensus, records_by_prompt
    from annotation.quality.models import LabelerReliability, PromptReview
    from annotation.quality.selectors import gold_maps, ranking_records
    from preferences.tiers import tier_map, tiers_from_map

    records = [r for r in ranking_records(project=project, round_number=round_number) if r.source in HUMAN_SOURCES]
    gold = gold_maps(project=project)
    weights = dict(LabelerReliability.objects.filter(project=project).values_list("labeler_id", "weight"))
    adjudicated = dict(PromptReview.objects.filter(prompt__project=project, status=PromptReview.Status.ADJUDICATED)
                       .values_list("prompt_id", "tiers"))
    grouped = records_by_prompt(records)
    prompts = Prompt.objects.filter(pk__in=list(grouped)).order_by("id").values_list("id", "messages", "round__number")
    for prompt_id, messages, number in prompts.iterator(chunk_size=500):
        prompt_records = grouped[prompt_id]
        result = prompt_consensus(records=prompt_records, weights=weights)
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
            "rankings": len(prompt_records), "ranking_ids": [r.ranking_id for r in prompt_records],
        }


def reference_disagreement_scores(*, round_):
    """``lab.active.selectors.disagreement_scores`` as it was: records, then agreement one prompt at a time."""
    from annotation.models import Prompt
    from annotation.provenance import HUMAN_SOURCES
    from annotation.quality import metrics as quality
    from annotation.quality.selectors import ranking_records

    by_prompt: dict[int, list] = {}
    for record in ranking_records(project=round_.project, round_number=round_.number):
        if record.labeler_id is not None and record.source in HUMAN_SOURCES:
            by_prompt.setdefault(record.prompt_id, []).append(record.tiers)
    scores = {}
    for prompt in Prompt.objects.filter(round=round_).values_list("id", flat=True):
        rankings = by_prompt.get(prompt, [])
        agreements = [quality.pairwise_agreement(a, b) for a, b in combinations(rankings, 2)]
        scores[prompt] = 1.0 - sum(agreements) / len(agreements) if agreements else 0.0
    return scores


def split_arrays(project) -> None:
    """The array path's steps on their own: read, group, Bradley-Terry fit (weights 1)."""
    import numpy as np

    from annotation.quality.array_consensus import consensus_strengths, table_rows
    from annotation.quality.arrays import prompts_of
    from annotation.quality.figures import HUMAN_SOURCES
    from annotation.quality.ranking_table import ranking_table

    table, _ = timed("  read (ranking_table)", ranking_table, project=project)
    prompts, _ = timed("  group (table_rows, prompts_of)", lambda: prompts_of(table_rows(
        table, table.source_in(HUMAN_SOURCES))))
    timed("  Bradley-Terry, all prompts", consensus_strengths, prompts, np.ones(len(prompts.of_row)))


def _lines(rows) -> list[str]:
    return [json.dumps(row, ensure_ascii=False) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--project", default="load")
    parser.add_argument("--path", choices=["both", "arrays", "reference"], default="both")
    parser.add_argument("--split", action="store_true", help="also time the array path's steps")
    args = parser.parse_args()
    os.environ.update(DATABASE_URL=f"{PG}/{args.db}", DJANGO_SETTINGS_MODULE="webapp.settings.local", DJANGO_DEBUG="0")
    import django

    django.setup()
    from annotation.models import Project, Round
    from annotation.quality.selectors import consensus_rows
    from lab.active.selectors import disagreement_scores

    project = Project.objects.get(slug=args.project)
    round_ = Round.objects.filter(project=project).order_by("number").first()
    print(f"load average {os.getloadavg()[0]:.1f}")
    out = {}
    if args.split:
        split_arrays(project)
    if args.path in ("both", "arrays"):
        out["arrays"] = (timed("consensus_rows (arrays)", lambda: _lines(consensus_rows(project=project))),
                         timed("disagreement_scores (arrays)", disagreement_scores, round_=round_))
    if args.path in ("both", "reference"):
        out["reference"] = (timed("consensus_rows (reference)",
                                  lambda: _lines(reference_consensus_rows(project=project))),
                            timed("disagreement_scores (reference)", reference_disagreement_scores, round_=round_))
    if len(out) == 2:
        (rows, rows_s), (scores, scores_s) = out["arrays"]
        (ref_rows, ref_rows_s), (ref_scores, ref_scores_s) = out["reference"]
        print(f"consensus_rows: {len(rows)} rows, reference / arrays = {ref_rows_s / rows_s:.1f}x, "
              f"identical JSON lines: {rows == ref_rows}")
        print(f"disagreement_scores: {len(scores)} prompts, reference / arrays = {ref_scores_s / scores_s:.1f}x, "
              f"identical (keys, order, values): {list(scores.items()) == list(ref_scores.items())}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
