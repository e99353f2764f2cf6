"""What the export's database side costs per pair: walking the rankings (the export's ``_pair_chunks``) against
walking the pairs joined to their ranking, prompt, round and labeler (the export before it), in one process.

    .venv/bin/python bench/export_walk.py --db rlhf_scale --pairs 1000000     # a database filled by scale_store.py

Each walk reads the first ``--pairs`` pairs of the project "load" (with what the export needs of them, texts
left out), inside one transaction, twice, alternating. Printed per walk: the PostgreSQL backend's CPU seconds
(read from /proc, so PostgreSQL must run on this machine), this process's CPU seconds and the wall seconds,
per pair; then the ratio of the backends' CPU (reference / ranking walk), best of the two rounds each.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def backend_cpu_s(connection) -> float:
    """CPU seconds (user + system) of this connection's PostgreSQL backend process so far."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="rlhf_scale")
    parser.add_argument("--pairs", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.update(DATABASE_URL=f"{PG}/{args.db}", DJANGO_SETTINGS_MODULE="webapp.settings.local",
                      DJANGO_DEBUG="0")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.db.models import Exists, OuterRef

    from annotation import exporters
    from annotation.models import PairwiseComparison, Project, RankingExclusion
    from annotation.provenance import HUMAN_ONLY

    project = Project.objects.get(slug="load")

    def pair_walk() -> int:  # the export before: every pair joined to its ranking, prompt, round and labeler
        excluded = RankingExclusion.objects.filter(ranking=OuterRef("ranking_id"))
        pairs = PairwiseComparison.objects.filter(
            ~Exists(excluded), prompt__project=project, ranking__source__in=HUMAN_ONLY.sources,
        ).order_by("id").values_list(
            "margin", "weight", exporters._username_field("ranking__"), "ranking__source", "prompt__round__number",
            "prompt_id", "ranking_id", "chosen_id", "rejected_id")
        n = 0
        for _ in pairs.iterator(chunk_size=exporters.EXPORT_CHUNK_PAIRS):
            n += 1
            if n >= args.pairs:
                break
        return n

    def ranking_walk() -> int:  # the export now, without the texts
        rankings = exporters._pair_chunks(project, None, selection=HUMAN_ONLY)
        original, exporters._with_texts = exporters._with_texts, lambda chunk: (chunk, {}, {})
        try:
            n = 0
            for chunk, _, _ in rankings:
                n += len(chunk)
                if n >= args.pairs:
                    rankings.close()
                    break
            return n
        finally:
            exporters._with_texts = original

    best: dict[str, tuple[float, float, float, int]] = {}
    for _ in range(2):
        for name, walk in (("pair walk (before)", pair_walk), ("ranking walk (now)", ranking_walk)):
            with transaction.atomic():
                backend, cpu, wall = backend_cpu_s(connection), time.process_time(), time.perf_counter()
                n = walk()
                figures = (backend_cpu_s(connection) - backend, time.process_time() - cpu,
                           time.perf_counter() - wall, n)
            if name not in best or figures[0] < best[name][0]:
                best[name] = figures
    print(f"{args.pairs:,} pairs of {args.db}, load average {os.getloadavg()[0]:.1f}; best of 2 rounds")
    for name, (backend, cpu, wall, n) in best.items():
        print(f"{name:20s} PostgreSQL {backend / n * 1e6:5.2f} µs/pair   this process {cpu / n * 1e6:5.2f} µs/pair"
              f"   wall {wall / n * 1e6:5.2f} µs/pair   ({n:,} pairs)")
    before, now = best["pair walk (before)"], best["ranking walk (now)"]
    print(f"PostgreSQL CPU per pair, before / now: {before[0] / before[3] / (now[0] / now[3]):.2f}x")


if __name__ == "__main__":
    main()
