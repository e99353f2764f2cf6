"""The quality report's figures over arrays against the per-prompt reference, on synthetic rankings (no database).

    .venv/bin/python bench/quality_figures.py --prompts 20000                    # both, checked equal, ratio
    .venv/bin/python bench/quality_figures.py --prompts 555556 --no-reference    # 1.67M rankings: arrays only

``--prompts`` prompts × K samples, each ranked by ``--overlap`` of ``--labelers`` labelers (random tiers with
ties, shown order, timings, 30 days), built once as a ``RankingTable`` (what ``ranking_table`` reads) and as
``RankingRecord`` objects (what ``ranking_records`` reads). Times the report's figures over each — overall and
per-round agreement, labeler rows with their reweighting, timeline, review queue — checks that both give the same
JSON, and prints the ratio. Loading from PostgreSQL is measured by ``bench/scale_store.py --only quality``.
"""
import argparse
import json
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402

from annotation.models import Ranking  # noqa: E402
from annotation.quality import array_figures, array_labelers, figures  # noqa: E402
from annotation.quality.arrays import RankingTable, prompts_of  # noqa: E402

SETTINGS = {"review_threshold": 0.5, "speed_ratio": 0.25}
DAY0 = 20_500  # days since 1970-01-01


def synthetic(prompts: int, k: int, overlap: int, labelers: int, seed: int) -> RankingTable:
    rng = np.random.default_rng(seed)
    n = prompts * overlap
    prompt = np.repeat(np.arange(1, prompts + 1), overlap)
    labeler = np.stack([rng.choice(labelers, overlap, replace=False) for _ in range(prompts)]).ravel() + 1
    labels = rng.integers(0, k, (n, k))  # a tier label per sample; equal labels tie
    tiers = _dense(labels)
    shown = rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1)
    return RankingTable(
        ranking_id=np.arange(1, n + 1), prompt_id=prompt, round_number=1 + (prompt > prompts // 2),
        labeler_id=labeler, source=np.zeros(n, np.int64), time_spent_ms=rng.integers(500, 60_000, n),
        day=DAY0 + rng.integers(0, 30, n), entry_row=np.repeat(np.arange(n), k),
        entry_sample=np.repeat(prompt, k) * k + np.tile(np.arange(k), n), entry_tier=tiers.ravel(),
        entry_shown=shown.ravel(), sources=(*Ranking.Source.values, "(unknown)"),
        usernames={i: f"labeler{i}" for i in range(1, labelers + 1)})


def _dense(labels: np.ndarray) -> np.ndarray:
    """Tier labels as dense tiers 0, 1, … per row (the rank of each label among the row's distinct labels)."""
    present = np.zeros((len(labels), labels.shape[1]), bool)
    present[np.arange(len(labels))[:, None], labels] = True
    return np.take_along_axis(np.cumsum(present, 1) - 1, labels, 1)


def records_of(table: RankingTable) -> list[figures.RankingRecord]:
    """The table as the reference's records, entries in (tier, shown position) order as the ORM lists them."""
    records = []
    k = len(table.entry_row) // max(len(table), 1)
    for i in range(len(table)):
        at = slice(i * k, (i + 1) * k)
        entries = sorted(zip(table.entry_tier[at].tolist(), table.entry_shown[at].tolist(),
                             table.entry_sample[at].tolist()))
        records.append(figures.RankingRecord(
            ranking_id=int(table.ranking_id[i]), prompt_id=int(table.prompt_id[i]),
            round_number=int(table.round_number[i]), labeler_id=int(table.labeler_id[i]),
            labeler=table.usernames[int(table.labeler_id[i])], source=table.sources[table.source[i]],
            tiers={s: t for t, _, s in entries}, shown={s: p for _, p, s in entries},
            time_spent_ms=int(table.time_spent_ms[i]),
            created_at=datetime.fromtimestamp(int(table.day[i]) * 86_400 + 3_600, tz=timezone.utc), excluded=False))
    return records


def with_arrays(table: RankingTable) -> dict:
    prompts = prompts_of(table)
    pairs = array_figures.ranking_pairs(prompts)
    members = table.source_in(figures.HUMAN_SOURCES)
    rounds = sorted(set(table.round_number[members].tolist()))
    overall, per_round = array_figures.agreement_summaries(table, prompts, pairs, members, rounds)
    return {"overall": overall, "rounds": [{"round": n, **s} for n, s in zip(rounds, per_round)],
            "labelers": array_labelers.labeler_rows_weighted(table, prompts, pairs, {}, SETTINGS),
            "timeline": array_figures.timeline(table, pairs, members),
            "review_queue": array_figures.review_queue(table, prompts, pairs, members, threshold=0.5, reviewed=set(),
                                                       gold=set())}


def with_reference(records: list) -> dict:
    rounds = sorted({r.round_number for r in records})
    return {"overall": figures.agreement_summary(records),
            "rounds": [{"round": n, **figures.agreement_summary([r for r in records if r.round_number == n])}
                       for n in rounds],
            "labelers": figures.labeler_rows_weighted(records, {}, SETTINGS), "timeline": figures.timeline(records),
            "review_queue": figures.review_queue(records=records, threshold=0.5, reviewed=set())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--labelers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="time the arrays only")
    args = parser.parse_args()
    table = synthetic(args.prompts, args.k, args.overlap, args.labelers, args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    fast = with_arrays(table)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = len(table) * args.k * (args.k - 1) // 2
    print(f"{len(table):,} rankings ({pairs:,} ranked pairs before ties), load average {os.getloadavg()[0]:.1f}")
    print(f"arrays:    {seconds:8.2f} s wall, {cpu:.2f} s CPU (peak RSS {rss:.0f} MB)")
    if args.no_reference:
        return
    records = records_of(table)
    started, cpu_reference = time.perf_counter(), time.process_time()
    slow = with_reference(records)
    reference, cpu_reference = time.perf_counter() - started, time.process_time() - cpu_reference
    same = json.dumps(fast, default=str) == json.dumps(slow, default=str)
    print(f"reference: {reference:8.2f} s wall, {cpu_reference:.2f} s CPU -> {cpu_reference / cpu:.0f}x CPU; "
          f"identical figures: {same}")
    if not same:
        raise SystemExit("the figures differ")


if __name__ == "__main__":
    main()
