"""The store at scale: fill a scratch PostgreSQL database with N prompts × K samples and ~P pairs, then measure.

    .venv/bin/python bench/scale_store.py --prompts 100000 --pairs-target 1000000     # pipeline check
    .venv/bin/python bench/scale_store.py                                             # 1M prompts, ~10M pairs
    .venv/bin/python bench/scale_store.py --skip-fill --only plan,export              # re-measure, same data

Fill (``--db``, default ``rlhf_scale``: dropped and created, never a test database): the project's own
migrations, one project ``load`` (K responses, overlap 3) with ``--labelers`` members, then COPY (psycopg,
tqdm progress) of the prompts and samples, and for the first prompts — as a project served in id order
has them — ``overlap`` submitted leases each with their Ranking, K RankingEntry rows and C(K,2) pairs
(no ties) until ``--pairs-target`` pairs; those prompts' slot counters say full. The COPY runs with
``session_replication_role = replica`` (no per-row triggers: the ranking-coverage and pair-within-prompt
triggers of migration 0002 and the foreign-key triggers would cost hours at 10M rows); the same
invariants are then checked set-based in SQL (every ranking ranks exactly its prompt's K samples, every
pair's samples and ranking belong to its prompt, every foreign key resolves) and the fill fails if one
does not hold.

Measurements, each in a child process (its own peak RSS, bounded by ``--timeout``):
- ``load``: ``--labelers`` concurrent labelers over HTTP against gunicorn (bench/load_labelers.py's
  clients), zero think time unless ``--think``; fetch and submit p50/p95, then every acknowledged submit
  is checked in the database;
- ``plan``: EXPLAIN (ANALYZE, BUFFERS) of the candidate queries a fetch runs (captured from
  ``assignment_next_for_labeler`` in a rolled-back transaction);
- ``rounds``: a fetch in-process with one open round, then with a second open round of ``--second-round``
  fresh prompts (added in a transaction that is rolled back), and the candidate query's plan then;
- ``export``: all pairs as JSONL (``export_preferences``, format pairs) to /dev/null, as the app exports (the
  database side read ahead in its own thread) and inline in one transaction (the reference), in one process:
  pairs/s of each and their ratio, time to the
  first chunk, peak RSS and RSS along the way;
- ``quality``: ``quality_report`` (what the quality page shows);
- ``snapshot``: ``training.services.snapshot_create`` of all rankings (rolled back afterwards).
Prints a table. Drop the database afterwards with ``--drop`` (or ``DROP DATABASE rlhf_scale``).
"""
import argparse
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
STEPS = ("load", "plan", "rounds", "export", "quality", "snapshot")
COPY_ROWS = 20_000  # rows per COPY write


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="rlhf_scale", help="scratch database (dropped and re-created by the fill)")
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--pairs-target", type=int, default=10_000_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--labelers", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of HTTP load")
    parser.add_argument("--think", type=float, default=0.0, help="median think time (s); 0: back to back")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--second-round", type=int, default=300_000,
                        help="prompts of the second open round that the 'rounds' measurement adds (rolled back)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement before it is cut")
    parser.add_argument("--skip-fill", action="store_true", help="measure the database as it is")
    parser.add_argument("--skip-validate", action="store_true", help="do not check the invariants after COPY")
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def django_setup(db: str) -> None:
    os.environ.update(DATABASE_URL=f"{PG}/{db}", DJANGO_SETTINGS_MODULE="webapp.settings.local", DJANGO_DEBUG="0")
    import django

    django.setup()


# ---------------------------------------------------------------- fill

def _copy(cursor, table: str, columns: str, rows, total: int, desc: str) -> None:
    """COPY text rows (tab-separated, already escaped) into table, with a progress bar."""
    from tqdm import tqdm

    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy, tqdm(total=total, desc=desc, unit="row",
                                                                          unit_scale=True, mininterval=2) as bar:
        buffer = io.StringIO()
        n = 0
        for row in rows:
            buffer.write(row)
            n += 1
            if n == COPY_ROWS:
                copy.write(buffer.getvalue())
                bar.update(n)
                buffer, n = io.StringIO(), 0
        copy.write(buffer.getvalue())
        bar.update(n)


def fill(args: argparse.Namespace) -> dict:
    import psycopg

    started = time.monotonic()
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {args.db}")
    django_setup(args.db)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from annotation.models import Membership, Project, Round

    call_command("migrate", verbosity=0)
    project = Project.objects.create(slug="load", name="Load", k=args.k, overlap=args.overlap, guidelines="Rank.")
    rnd = Round.objects.create(project=project, number=1)
    users = get_user_model()
    labeler_ids = []
    for i in range(args.labelers):
        user = users.objects.create_user(f"load{i}", password=f"pw-load{i}")
        Membership.objects.create(project=project, user=user)
        labeler_ids.append(user.pk)
    k, overlap = args.k, args.overlap
    pairs_per_ranking = k * (k - 1) // 2
    ranked = min(args.prompts - 1000, -(-args.pairs_target // (pairs_per_ranking * overlap)))  # leave some open
    ranked = max(ranked, 0)
    now = "2026-01-01 00:00:00+00"
    rng = random.Random(0)
    orders = {}  # prompt -> per-labeler permutations are drawn while writing entries and pairs (same seed twice)

    def perm(p: int, j: int) -> list[int]:
        order = list(range(k))
        random.Random(p * 131 + j).shuffle(order)
        return order

    def sample_id(p: int, pos: int) -> int:
        return (p - 1) * k + pos + 1

    def ranking_id(p: int, j: int) -> int:
        return (p - 1) * overlap + j + 1

    def labeler(p: int, j: int) -> int:
        return labeler_ids[(p * 7 + j) % len(labeler_ids)]

    def prompts():
        for p in range(1, args.prompts + 1):
            full = p <= ranked
            yield (f"{p}\t[{{\"role\": \"user\", \"content\": \"Question {p}: explain topic {p % 997}.\"}}]\t\tf\t{now}\t"
                   f"{project.pk}\t{rnd.pk}\t{overlap if full else 0}\t\\N\n")

    def samples():
        for p in range(1, args.prompts + 1):
            for j in range(k):
                text = f"Answer {j} to prompt {p}: " + "some words of a response " * 6
                yield (f"{sample_id(p, j)}\t{text}\t{hashlib.sha256(text.encode()).hexdigest()}\t{j}\tbench\t\\N\t"
                       f"\\N\t{now}\t{p}\n")

    def assignments():
        for p in range(1, ranked + 1):
            shown = json.dumps([sample_id(p, x) for x in range(k)])
            for j in range(overlap):
                yield f"{ranking_id(p, j)}\tsubmitted\t{shown}\t\t{now}\t{now}\t{now}\t{labeler(p, j)}\t{p}\n"

    def rankings():
        for p in range(1, ranked + 1):
            for j in range(overlap):
                r = ranking_id(p, j)
                yield f"{r}\thuman\t{rng.randint(2000, 60000)}\t{now}\t{r}\t{labeler(p, j)}\t{p}\tf\t\n"

    def entries():
        for p in range(1, ranked + 1):
            for j in range(overlap):
                r = ranking_id(p, j)
                for tier, pos in enumerate(perm(p, j)):
                    yield f"{(r - 1) * k + pos + 1}\t{tier}\t{pos}\t[]\t{r}\t{sample_id(p, pos)}\n"

    def pairs():
        for p in range(1, ranked + 1):
            for j in range(overlap):
                r = ranking_id(p, j)
                order = perm(p, j)
                for n, (a, b) in enumerate(combinations(range(k), 2)):
                    yield (f"{(r - 1) * pairs_per_ranking + n + 1}\t{b - a}\t1.0\t{p}\t{r}\t"
                           f"{sample_id(p, order[a])}\t{sample_id(p, order[b])}\n")

    del orders
    n_rankings = ranked * overlap
    with psycopg.connect(f"{PG}/{args.db}") as conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # no per-row triggers; checked set-based below
        t = "annotation_"
        _copy(cur, t + "prompt", "id,messages,external_id,is_gold,created_at,project_id,round_id,slots_taken,"
              "lease_expires_min", prompts(), args.prompts, "prompts")
        _copy(cur, t + "sample", "id,text,text_sha256,position,model_name,logprob,num_tokens,created_at,prompt_id",
              samples(), args.prompts * k, "samples")
        _copy(cur, t + "assignment", "id,status,shown_order,skip_reason,created_at,expires_at,finished_at,"
              "labeler_id,prompt_id", assignments(), n_rankings, "assignments")
        _copy(cur, t + "ranking", "id,source,time_spent_ms,created_at,assignment_id,labeler_id,prompt_id,all_bad,"
              "comment", rankings(), n_rankings, "rankings")
        _copy(cur, t + "rankingentry", "id,tier,shown_position,flags,ranking_id,sample_id", entries(),
              n_rankings * k, "entries")
        _copy(cur, t + "pairwisecomparison", "id,margin,weight,prompt_id,ranking_id,chosen_id,rejected_id", pairs(),
              n_rankings * pairs_per_ranking, "pairs")
        for table in ("prompt", "sample", "assignment", "ranking", "rankingentry", "pairwisecomparison"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{t}{table}', 'id'), "
                        f"(SELECT coalesce(max(id), 1) FROM {t}{table}))")
        conn.commit()
    loaded = time.monotonic() - started
    with psycopg.connect(f"{PG}/{args.db}", autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        problems = [] if args.skip_validate else validate(conn, k)
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    if problems:
        raise SystemExit("fill broke an invariant: " + "; ".join(problems))
    return {"prompts": args.prompts, "rankings": n_rankings, "pairs": n_rankings * pairs_per_ranking,
            "fill_s": loaded, "total_s": time.monotonic() - started, "size": size,
            "validated": not args.skip_validate}


def validate(conn, k: int) -> list[str]:
    """The invariants of migration 0002's triggers and of the foreign keys, checked set-based."""
    t = "annotation_"
    checks = {
        "a ranking does not rank exactly its prompt's samples": f"""
            SELECT count(*) FROM {t}ranking r LEFT JOIN (
                SELECT e.ranking_id, count(*) AS n, min(s.prompt_id) AS lo, max(s.prompt_id) AS hi
                  FROM {t}rankingentry e JOIN {t}sample s ON s.id = e.sample_id GROUP BY e.ranking_id) x
              ON x.ranking_id = r.id
             WHERE x.n IS DISTINCT FROM (SELECT count(*) FROM {t}sample s WHERE s.prompt_id = r.prompt_id)
                OR x.lo <> r.prompt_id OR x.hi <> r.prompt_id""",
        "a pair compares samples of another prompt or ranking": f"""
            SELECT count(*) FROM {t}pairwisecomparison p
              LEFT JOIN {t}sample c ON c.id = p.chosen_id LEFT JOIN {t}sample j ON j.id = p.rejected_id
              LEFT JOIN {t}ranking r ON r.id = p.ranking_id
             WHERE c.prompt_id IS DISTINCT FROM p.prompt_id OR j.prompt_id IS DISTINCT FROM p.prompt_id
                OR r.prompt_id IS DISTINCT FROM p.prompt_id OR p.chosen_id = p.rejected_id OR p.margin < 1""",
        "an assignment or ranking points nowhere": f"""
            SELECT count(*) FROM {t}ranking r LEFT JOIN {t}assignment a ON a.id = r.assignment_id
              LEFT JOIN auth_user u ON u.id = r.labeler_id
             WHERE a.id IS NULL OR u.id IS NULL OR a.prompt_id <> r.prompt_id OR a.labeler_id <> r.labeler_id""",
        "a sample or prompt points nowhere": f"""
            SELECT (SELECT count(*) FROM {t}sample s LEFT JOIN {t}prompt p ON p.id = s.prompt_id WHERE p.id IS NULL)
                 + (SELECT count(*) FROM {t}prompt p LEFT JOIN {t}round r ON r.id = p.round_id WHERE r.id IS NULL)""",
    }
    problems = []
    for name, sql in checks.items():
        started = time.monotonic()
        n = conn.execute(sql).fetchone()[0]
        print(f"  check: {name}? {n} rows ({time.monotonic() - started:.1f} s)", flush=True)
        if n:
            problems.append(f"{n}: {name}")
    return problems


# ---------------------------------------------------------------- measurements (child processes)

def measure_plan(args) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Project
    from annotation.services import assignment_next_for_labeler

    project = Project.objects.get(slug="load")
    user = get_user_model().objects.get(username="load0")
    with transaction.atomic():
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as ctx:
            assignment_next_for_labeler(project=project, labeler=user)
        fetch_ms = (time.perf_counter() - started) * 1000
        transaction.set_rollback(True)
    candidate = [q["sql"] for q in ctx.captured_queries if "SKIP LOCKED" in q["sql"]]
    plans = []
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in candidate:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
        transaction.set_rollback(True)
    times = [float(p.rsplit("Execution Time:", 1)[1].split()[0]) for p in plans]
    return {"queries": len(ctx.captured_queries), "fetch_ms": fetch_ms, "candidate_ms": times, "plans": plans}


def measure_rounds(args) -> dict:
    """A fetch while a second round is open: ``--second-round`` fresh prompts (copies of the last ones of
    round 1, no slot taken) in a new open round, inside a transaction that is rolled back. Serving order is
    round first, so the fetch still leases from round 1; the second round must not cost it anything."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Project, Prompt, Round
    from annotation.services import assignment_next_for_labeler

    project = Project.objects.get(slug="load")
    user = get_user_model().objects.get(username="load0")

    def fetch_ms() -> tuple[float, list[str]]:
        sid = transaction.savepoint()
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as ctx:
            assignment_next_for_labeler(project=project, labeler=user)
        elapsed = (time.perf_counter() - started) * 1000
        transaction.savepoint_rollback(sid)
        return elapsed, [q["sql"] for q in ctx.captured_queries if "SKIP LOCKED" in q["sql"]]

    with transaction.atomic():
        one = [fetch_ms()[0] for _ in range(3)]
        first = Round.objects.filter(project=project).order_by("number").first()
        second = Round.objects.create(project=project, number=first.number + 1, status=Round.Status.OPEN)
        columns = [f.column for f in Prompt._meta.concrete_fields if f.column not in ("id", "round_id")]
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO annotation_prompt ({', '.join(columns)}, round_id) SELECT "
                           f"{', '.join(columns)}, %s FROM annotation_prompt WHERE round_id = %s ORDER BY id DESC "
                           f"LIMIT %s", [second.pk, first.pk, args.second_round])
            cursor.execute("UPDATE annotation_prompt SET slots_taken = 0, lease_expires_min = NULL "
                           "WHERE round_id = %s", [second.pk])
            cursor.execute("ANALYZE annotation_prompt")
        timed = [fetch_ms() for _ in range(3)]
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + timed[-1][1][0])
            plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    def figure(label):
        return float(next(line for line in plan if line.startswith(label)).split(":")[1].split()[0])
    return {"second_round": args.second_round, "one_round_ms": one, "two_rounds_ms": [t for t, _ in timed],
            "planning_ms": figure("Planning Time"), "execution_ms": figure("Execution Time")}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_export(args) -> dict:
    """All pairs as JSONL, twice in this process: as the app exports (``read_ahead``: the database side in a
    thread of its own, a couple of chunks ahead) and the same export inside the caller's transaction
    (``inline``: one connection, reading and encoding one after the other, the export before read-ahead). The
    read-ahead export runs first, so any warming of the caches favours the reference."""
    from django.db import transaction

    from annotation.exporters import export_preferences
    from annotation.models import Project

    project = Project.objects.get(slug="load")

    def one(label: str) -> dict:
        rss = [round(_rss_mb())]
        cpu = time.process_time()  # every thread of this process, the reader's included
        started = time.perf_counter()
        first = None
        size = lines = 0
        next_sample = 100 << 20
        with open(os.devnull, "wb") as sink:
            for chunk in export_preferences(project=project, fmt="pairs", file_format="jsonl"):
                if first is None:
                    first = time.perf_counter() - started
                sink.write(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
                if size >= next_sample:
                    rss.append(round(_rss_mb()))
                    next_sample += 500 << 20
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        return {"pairs": lines, "seconds": elapsed, "pairs_per_s": lines / elapsed, "pairs_per_cpu_s": lines / cpu,
                "first_chunk_s": first, "mb": size / 2**20, "rss_mb_along": rss, "load_after": os.getloadavg()[0]}

    ahead = one("read ahead")
    with transaction.atomic():
        inline = one("inline")
    return {"read_ahead": ahead, "inline": inline, "ratio": ahead["pairs_per_s"] / inline["pairs_per_s"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_quality(args) -> dict:
    from annotation.models import Project
    from annotation.quality.selectors import quality_report

    project = Project.objects.get(slug="load")
    started = time.perf_counter()
    report = quality_report(project=project)
    return {"seconds": time.perf_counter() - started, "keys": sorted(report)[:8],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_snapshot(args) -> dict:
    from django.db import transaction

    from annotation.models import Project
    from training.services import snapshot_create

    project = Project.objects.get(slug="load")
    with transaction.atomic():
        started = time.perf_counter()
        snapshot = snapshot_create(project=project)
        seconds = time.perf_counter() - started
        linked = snapshot.rankings.count()
        transaction.set_rollback(True)  # the scratch database stays as filled
    return {"seconds": seconds, "rankings": snapshot.num_rankings, "pairs": snapshot.num_pairs, "linked": linked,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_load(args) -> dict:
    import statistics

    import load_labelers as ll
    from django.db.models import Count

    from annotation.models import PairwiseComparison, Ranking

    ll.DATABASE_URL = f"{PG}/{args.db}"
    port = ll.free_port()
    server = ll.start_gunicorn(port, args)
    log: dict[str, list] = {"fetch": [], "submit": [], "acked": []}
    try:
        clients = [ll.Labeler(port, f"load{i}") for i in range(args.labelers)]
        for client in clients:
            client.login()
        load_before = os.getloadavg()[0]
        deadline = time.monotonic() + args.duration
        threads = [threading.Thread(target=ll.run_labeler, args=(c, 1000 + i, deadline, log, args.think))
                   for i, c in enumerate(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.duration + 4 * args.think + 60)
        elapsed = time.monotonic() - started
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    load_after = os.getloadavg()[0]
    problems = 0
    prompts = {p for p, _, _ in log["acked"]}
    for prompt_id, username, tiers in log["acked"]:
        pairs = sum(len(a) * len(b) for a, b in combinations(tiers, 2))
        got = PairwiseComparison.objects.filter(ranking__prompt_id=prompt_id, ranking__labeler__username=username).count()
        problems += got != pairs
    over = (Ranking.objects.filter(prompt_id__in=prompts).values("prompt").annotate(n=Count("id"))
            .filter(n__gt=args.overlap).count())

    def q(values, n):
        return statistics.quantiles(values, n=100, method="inclusive")[n - 1] * 1000 if len(values) > 1 else None

    return {"seconds": elapsed, "load_before": load_before, "load_after": load_after,
            "fetch_n": len(log["fetch"]), "fetch_p50": q(log["fetch"], 50), "fetch_p95": q(log["fetch"], 95),
            "submit_n": len(log["submit"]), "submit_p50": q(log["submit"], 50), "submit_p95": q(log["submit"], 95),
            "acked": len(log["acked"]), "problems": problems + over}


MEASURES = {"load": measure_load, "plan": measure_plan, "rounds": measure_rounds, "export": measure_export, "quality": measure_quality,
            "snapshot": measure_snapshot}


def run_child(args: argparse.Namespace, step: str) -> dict:
    """One measurement in a fresh process: its own peak RSS; cut after --timeout seconds."""
    argv = [sys.executable, __file__, *sys.argv[1:], "--child", step]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"cut after {args.timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(fill_info: dict | None, results: dict, args: argparse.Namespace) -> str:
    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"scale: {fill_info or 'as filled before'}", f"{os.cpu_count()} CPUs, load average now "
             f"{os.getloadavg()[0]:.2f}", "", f"{'measure':34s} value"]
    r = results.get("load")
    if r and "error" not in r:
        lines += [f"{'fetch p50 / p95 (ms)':34s} {f(r['fetch_p50'])} / {f(r['fetch_p95'])}   n={r['fetch_n']}",
                  f"{'submit p50 / p95 (ms)':34s} {f(r['submit_p50'])} / {f(r['submit_p95'])}   n={r['submit_n']}",
                  f"{'rankings/s':34s} {r['acked'] / r['seconds']:.1f}   ({args.labelers} labelers, "
                  f"think {args.think:g} s, load avg {r['load_before']:.1f} -> {r['load_after']:.1f}, "
                  f"{r['problems']} problems)"]
    r = results.get("plan")
    if r and "error" not in r:
        lines += [f"{'fetch in-process (ms, queries)':34s} {r['fetch_ms']:.1f}  ({r['queries']} queries)",
                  f"{'candidate query execution (ms)':34s} {', '.join(f'{t:.2f}' for t in r['candidate_ms'])}"]
    r = results.get("rounds")
    if r and "error" not in r:
        lines += [f"{'fetch, one open round (ms)':34s} {', '.join(f'{t:.1f}' for t in r['one_round_ms'])}",
                  f"{'fetch, 2nd open round (ms)':34s} {', '.join(f'{t:.1f}' for t in r['two_rounds_ms'])}   "
                  f"({r['second_round']} fresh prompts; candidate query {r['execution_ms']:.1f} ms execution, "
                  f"{r['planning_ms']:.1f} ms planning)"]
    r = results.get("export")
    if r and "error" not in r:
        for label, key in (("read ahead", "read_ahead"), ("inline, reference", "inline")):
            e = r[key]
            lines += [f"{'export pairs (jsonl, ' + label + ')':34s} {e['pairs']} pairs in {e['seconds']:.1f} s = "
                      f"{e['pairs_per_s']:,.0f} pairs/s, first chunk {f(e['first_chunk_s'], '{:.2f}')} s, "
                      f"{e['pairs_per_cpu_s']:,.0f} pairs per CPU-second of the exporting process, "
                      f"RSS along the way {e['rss_mb_along']} MB, load average after {e['load_after']:.1f}"]
        lines += [f"{'export read ahead / inline':34s} {r['ratio']:.2f}x pairs/s wall",
                  f"{'export memory (MB)':34s} peak RSS {r['peak_rss_mb']:.0f} (both exports)"]
    r = results.get("quality")
    if r and "error" not in r:
        lines.append(f"{'quality report (s)':34s} {r['seconds']:.1f}   peak RSS {r['peak_rss_mb']:.0f} MB")
    r = results.get("snapshot")
    if r and "error" not in r:
        lines.append(f"{'snapshot_create (s)':34s} {r['seconds']:.1f}   {r['rankings']} rankings, {r['pairs']} pairs, "
                     f"peak RSS {r['peak_rss_mb']:.0f} MB")
    for step, r in results.items():
        if "error" in r:
            lines.append(f"{step:34s} FAILED: {r['error']}")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.child:
        django_setup(args.db)
        print(json.dumps(MEASURES[args.child](args), default=str))
        return 0
    fill_info = None
    if not args.skip_fill:
        fill_info = fill(args)
        print(f"filled: {fill_info}", flush=True)
    results = {}
    for step in [s for s in args.only.split(",") if s]:
        print(f"measuring {step} ...", flush=True)
        results[step] = run_child(args, step)
        if step == "plan" and "plans" in results[step]:
            for plan in results[step]["plans"]:
                print(plan)
    print(table(fill_info, results, args))
    if args.drop:
        import psycopg

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
    return 1 if any("error" in r or r.get("problems") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
