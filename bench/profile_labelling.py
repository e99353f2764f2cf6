"""Per-request cost of the labelling paths, in-process (no HTTP): queries per call, time per call, and the
PostgreSQL plan of the lease's candidate query — on a fresh project and on one that is mostly done.

    .venv/bin/python bench/profile_labelling.py --prompts 4000 --calls 60

1. creates the database ``rlhf_bench_profile`` on the local PostgreSQL, migrates it and seeds a project
   (``--prompts`` prompts, K=4, overlap 3) with the seeding of ``bench/load_labelers.py``;
2. "fresh": 6 labelers take turns to lease (``assignment_next_for_labeler``) and submit
   (``ranking_submit``) ``--calls`` times; prints queries and p50/p95 milliseconds per call;
3. EXPLAIN ANALYZE of the candidate query a lease runs;
4. "mostly done": marks the first ``--done`` fraction of prompts as fully ranked (overlap submitted leases
   by filler users, written in bulk) and repeats 2 and 3 — the cost must not grow with the done prompts;
5. the label page (GET) and its HTML submit (POST) through Django's test client: queries per request.
"""
import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import load_labelers  # noqa: E402  (seed() and the PostgreSQL URL)

DB_NAME = "rlhf_bench_profile"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--done", type=float, default=0.75, help="fraction of prompts fully ranked in step 4")
    args = parser.parse_args()
    args.k, args.overlap, args.labelers = 4, 3, 6
    return args


def setup(args: argparse.Namespace) -> None:
    import psycopg

    with psycopg.connect(f"{load_labelers.PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    os.environ.update(DATABASE_URL=f"{load_labelers.PG}/{DB_NAME}", DJANGO_SETTINGS_MODULE="webapp.settings.local",
                      DJANGO_DEBUG="0")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    load_labelers.seed(args)


def _ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=20, method="inclusive")
    return f"p50={statistics.median(values) * 1000:6.2f} ms  p95={q[18] * 1000:6.2f} ms"


def profile_services(*, label: str, calls: int) -> None:
    """Lease and submit ``calls`` times, round-robin over the bench labelers; queries and time per call."""
    import random

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Project
    from annotation.services import assignment_next_for_labeler, ranking_submit

    project = Project.objects.get(slug="load")
    labelers = list(get_user_model().objects.filter(username__startswith="load").order_by("pk"))
    rng = random.Random(0)
    fetch_t, submit_t, fetch_q, submit_q = [], [], [], []
    for i in range(calls):
        labeler = labelers[i % len(labelers)]
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            lease = assignment_next_for_labeler(project=project, labeler=labeler)
            fetch_t.append(time.perf_counter() - start)
        fetch_q.append(len(queries))
        last_fetch = queries
        order = list(lease.shown_order)
        rng.shuffle(order)
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            ranking_submit(assignment_id=lease.pk, labeler=labeler, tiers=[[s] for s in order], time_spent_ms=1)
            submit_t.append(time.perf_counter() - start)
        submit_q.append(len(queries))
    print(f"[{label}] fetch  assignment_next_for_labeler: {max(fetch_q)} queries  {_ms(fetch_t)}")
    if os.environ.get("SHOW_QUERIES"):
        for q in last_fetch.captured_queries + queries.captured_queries:
            print(f"    {q['time']} s  {q['sql'][:150]}")
    print(f"[{label}] submit ranking_submit             : {max(submit_q)} queries  {_ms(submit_t)}")


def explain_candidates(*, label: str) -> None:
    """EXPLAIN ANALYZE of the first candidate query of a lease by a labeler with no lease yet."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotation.models import Membership, Project
    from annotation.selectors import prompt_lease_candidates

    project = Project.objects.get(slug="load")
    user, _ = get_user_model().objects.get_or_create(username="explainer")
    Membership.objects.get_or_create(project=project, user=user)
    query = prompt_lease_candidates(project=project, labeler=user, gold=False).select_related("project")
    query = query.select_for_update(skip_locked=True, of=("self",))[:8]
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) {sql}", params)
        plan = [row[0] for row in cursor.fetchall()]
    print(f"[{label}] EXPLAIN ANALYZE of the lease's candidate query:")
    for line in plan:
        print("    " + line)


def mark_done(*, fraction: float, overlap: int) -> int:
    """Fully rank the first ``fraction`` of prompts: ``overlap`` submitted leases each, by filler users."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from annotation.models import Assignment, Prompt

    now = timezone.now()
    fillers = [get_user_model().objects.create_user(f"filler{i}") for i in range(overlap)]
    ids = list(Prompt.objects.order_by("id").values_list("pk", flat=True))
    done = ids[: int(len(ids) * fraction)]
    Assignment.objects.bulk_create(
        (Assignment(prompt_id=pk, labeler=user, status=Assignment.Status.SUBMITTED, shown_order=[],
                    expires_at=now + timedelta(minutes=30), finished_at=now) for pk in done for user in fillers),
        batch_size=5000,
    )
    try:
        from annotation.services import prompt_slots_refresh
    except ImportError:  # before the denormalised slot counters existed
        pass
    else:
        prompt_slots_refresh(prompt_ids=done)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return len(done)


def profile_pages() -> None:
    """Queries of the label page and its HTML submit, as a browser would call them."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Assignment

    user = get_user_model().objects.get(username="load0")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    for attempt in range(2):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            page = client.get("/p/load/label/")
            elapsed = time.perf_counter() - start
        print(f"[pages] GET label page        : status {page.status_code}  {len(queries):3d} queries  {elapsed * 1000:6.1f} ms")
        lease = Assignment.objects.filter(labeler=user, status=Assignment.Status.ACTIVE).latest("id")
        form = {"tiers": json.dumps([[sample_id] for sample_id in lease.shown_order]), "time_spent_ms": 1000}
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            reply = client.post(f"/assignments/{lease.pk}/submit/", form, HTTP_HX_REQUEST="true")
            elapsed = time.perf_counter() - start
        print(f"[pages] POST submit (htmx)    : status {reply.status_code}  {len(queries):3d} queries  {elapsed * 1000:6.1f} ms")


def main() -> int:
    args = parse_args()
    setup(args)
    print(f"{args.prompts} prompts, K={args.k}, overlap={args.overlap}; load average {os.getloadavg()[0]:.2f}")
    profile_services(label="fresh", calls=args.calls)
    explain_candidates(label="fresh")
    done = mark_done(fraction=args.done, overlap=args.overlap)
    print(f"marked {done} prompts fully ranked")
    profile_services(label="mostly done", calls=args.calls)
    explain_candidates(label="mostly done")
    profile_pages()
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
