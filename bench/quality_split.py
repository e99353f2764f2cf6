"""Where the quality report's time goes, on a database filled by ``bench/scale_store.py``: loading vs each figure.

    .venv/bin/python bench/quality_split.py --db rlhf_scale_qual                    # the report's path (arrays)
    .venv/bin/python bench/quality_split.py --db rlhf_scale_qual --path reference   # ranking_records + figures.py

Wall and CPU seconds of each step, then the peak RSS. ``reference`` is the per-prompt path the report took
before (``selectors.ranking_records`` and ``annotation.quality.figures``), which the tests keep as the definition.
"""
import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def timed(name: str, fn, *args, **kwargs):
    started, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    print(f"{name:30s} {time.perf_counter() - started:8.2f} s wall {time.process_time() - cpu:8.2f} s CPU", flush=True)
    return result


def arrays_path(project, gold, settings) -> None:
    from annotation.quality import array_figures as af
    from annotation.quality import array_labelers as al
    from annotation.quality.arrays import prompts_of
    from annotation.quality.figures import HUMAN_SOURCES
    from annotation.quality.ranking_table import ranking_table

    table = timed("load (ranking_table)", ranking_table, project=project)
    prompts = timed("group (prompts_of)", prompts_of, table)
    pairs = timed("ranking pairs", af.ranking_pairs, prompts)
    members = table.source_in(HUMAN_SOURCES)
    rounds = sorted(set(table.round_number[members].tolist()))
    timed("agreement, overall + rounds", af.agreement_summaries, table, prompts, pairs, members, rounds)
    timed("labeler rows (reweighted)", al.labeler_rows_weighted, table, prompts, pairs, gold, settings)
    timed("timeline", af.timeline, table, pairs, members)
    timed("review queue", af.review_queue, table, prompts, pairs, members, threshold=settings["review_threshold"],
          reviewed=set(), gold=set(gold))


def reference_path(project, gold, settings) -> None:
    from annotation.quality import figures
    from annotation.quality.selectors import ranking_records

    everyone = timed("load (ranking_records)", ranking_records, project=project)
    records = [r for r in everyone if r.source in figures.HUMAN_SOURCES]
    rounds = sorted({r.round_number for r in records})
    timed("agreement, overall", figures.agreement_summary, records)
    timed("agreement, rounds", lambda: [figures.agreement_summary([r for r in records if r.round_number == n])
                                        for n in rounds])
    timed("labeler rows (reweighted)", figures.labeler_rows_weighted, everyone, gold, settings)
    timed("timeline", figures.timeline, records)
    timed("review queue", figures.review_queue, records=records, threshold=settings["review_threshold"],
          reviewed=set(), gold=set(gold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--project", default="load")
    parser.add_argument("--path", choices=["arrays", "reference"], default="arrays")
    args = parser.parse_args()
    os.environ.update(DATABASE_URL=f"{PG}/{args.db}", DJANGO_SETTINGS_MODULE="webapp.settings.local", DJANGO_DEBUG="0")
    import django

    django.setup()
    from annotation.models import Project
    from annotation.quality.selectors import gold_maps, quality_settings_get

    project = Project.objects.get(slug=args.project)
    gold, settings = gold_maps(project=project), quality_settings_get(project=project)
    print(f"{args.path} path, load average {os.getloadavg()[0]:.1f}")
    (arrays_path if args.path == "arrays" else reference_path)(project, gold, settings)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
