"""Load test: N simulated labelers fetch and submit over HTTP against gunicorn + PostgreSQL on 127.0.0.1.

    .venv/bin/python bench/load_labelers.py --labelers 32 --duration 30              # zero think time
    .venv/bin/python bench/load_labelers.py --labelers 32 --duration 120 --think 10  # realistic labelers

A simulated labeler is one browser session: it logs in through the login form (session cookie + CSRF
token, as a browser does), then loops over one keep-alive connection:
``POST /api/projects/<slug>/assignments/next/`` (fetch: lease the next prompt, or get the current lease),
then "thinks" (reads the prompt and the K responses and ranks them), then
``POST /api/assignments/<id>/ranking/`` (submit: a random ranking with ties, its think time as
``time_spent_ms``). Two load models:
- ``--think 0`` (default): no think time: every labeler fires its next request the moment the last one
  returns. A closed loop that measures the server's saturation throughput; with 32 labelers the latency
  is mostly queueing (Little's law: latency ≈ 32 / throughput), not service time.
- ``--think S``: each task takes a think time drawn from a log-normal distribution with median ``S``
  seconds (σ = 0.5, clipped to [S/4, 4S]); labelers start at random moments within the first ``S``
  seconds, so they do not arrive in lock-step. Human labelers rank K=4 responses in tens of seconds;
  ``--think 10`` is a fast labeler, i.e. a pessimistic load for a given N.

What it does, all on loopback, bounded in time:
1. creates a fresh database ``rlhf_bench_load`` on the local PostgreSQL, migrates it and seeds a project
   (K responses per prompt, overlap 3) with N labelers;
2. starts gunicorn (gthread, ``--workers`` processes × ``--threads`` threads; the default 3 × 4 suits
   2 cores shared with PostgreSQL: one process more than cores keeps a core busy while another waits
   on the database, and threads overlap the waits on commits) on a free port with DEBUG off;
3. runs the N labelers for ``--duration`` seconds (a labeler stops fetching at the deadline and finishes
   the task in hand);
4. prints p50/p95/p99 latency and throughput of fetch and submit, and the load average before and
   after, then checks in the database that nothing was lost or duplicated: every acknowledged submit is
   a ranking with exactly its pairs, no labeler ranked a prompt twice, no prompt has more than
   ``overlap`` rankings.
Exit status 1 if a check fails (the latency target is reported, not enforced).
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "rlhf_bench_load"
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DATABASE_URL = f"{PG}/{DB_NAME}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelers", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (bounded)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--think", type=float, default=0.0, help="median think time per task in seconds (0: none)")
    return parser.parse_args()


def setup_database(args: argparse.Namespace) -> None:
    """Fresh database, migrated, seeded with one project and N labelers (fast: bulk_create)."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    os.environ.update(DATABASE_URL=DATABASE_URL, DJANGO_SETTINGS_MODULE="webapp.settings.local", DJANGO_DEBUG="0")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    seed(args)


def seed(args: argparse.Namespace) -> None:
    import hashlib

    from django.contrib.auth import get_user_model

    from annotation.models import Membership, Project, Prompt, Round, Sample

    project = Project.objects.create(slug="load", name="Load", k=args.k, overlap=args.overlap, guidelines="Rank.")
    rnd = Round.objects.create(project=project, number=1)
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, round=rnd, messages=[{"role": "user", "content": f"Question {i}?"}])
        for i in range(args.prompts)
    )
    samples = []
    for prompt in prompts:
        for j in range(args.k):
            text = f"Answer {j} to prompt {prompt.pk}, " + "with some words " * 20
            samples.append(Sample(prompt=prompt, text=text, position=j, model_name="bench",
                                  text_sha256=hashlib.sha256(text.encode()).hexdigest()))
    Sample.objects.bulk_create(samples, batch_size=2000)
    users = get_user_model()
    for i in range(args.labelers):
        user = users.objects.create_user(f"load{i}", password=f"pw-load{i}")
        Membership.objects.create(project=project, user=user)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # planner statistics for the bulk-loaded tables, as autovacuum would


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "DJANGO_SETTINGS_MODULE": "webapp.settings.local",
           "DJANGO_DEBUG": "0", "DATABASE_CONN_MAX_AGE": "600", "DJANGO_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "-b", f"127.0.0.1:{port}", "-k", "gthread",
         "-w", str(args.workers), "--threads", str(args.threads), "--log-level", "warning", "--keep-alive", "30"],
        cwd=str(ROOT), env=env, start_new_session=True,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("gunicorn did not start")


class Labeler:
    """One browser-like client: a session cookie, a CSRF token, one keep-alive connection."""

    def __init__(self, port: int, username: str) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.username = username

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), **(headers or {})}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closed the idle keep-alive connection (a long think time): reconnect and send
            # again, as a browser does. Both endpoints are idempotent, so a resend is safe.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, data

    def login(self) -> None:
        self.request("GET", "/accounts/login/")
        form = f"csrfmiddlewaretoken={self.cookies['csrftoken']}&username={self.username}&password=pw-{self.username}"
        status, _ = self.request("POST", "/accounts/login/", form.encode(),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 302 and "sessionid" in self.cookies, f"login failed for {self.username}: {status}"

    def post_json(self, path: str, payload: dict | None = None):
        body = json.dumps(payload or {}).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json",
                                                  "X-CSRFToken": self.cookies["csrftoken"]})


def random_tiers(sample_ids: list[int], rng: random.Random) -> list[list[int]]:
    order = sample_ids[:]
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, len(order)), rng.randint(0, len(order) - 1)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]


def think_time(median_s: float, rng: random.Random) -> float:
    """Seconds a labeler spends reading and ranking one task: log-normal around the median, clipped."""
    if median_s <= 0:
        return 0.0
    return min(max(rng.lognormvariate(0.0, 0.5) * median_s, median_s / 4), median_s * 4)


def run_labeler(client: Labeler, seed: int, deadline: float, log: dict, think_s: float) -> None:
    rng = random.Random(seed)
    time.sleep(rng.uniform(0, think_s))  # arrive at random moments, not in lock-step
    while time.monotonic() < deadline:
        start = time.perf_counter()
        status, data = client.post_json("/api/projects/load/assignments/next/")
        log["fetch"].append(time.perf_counter() - start)
        if status == 204:
            return
        assert status == 200, (status, data[:300])
        lease = json.loads(data)
        tiers = random_tiers(lease["shown_order"], rng)
        thinking = think_time(think_s, rng)
        time.sleep(thinking)
        payload = {"tiers": tiers, "time_spent_ms": max(1, int(thinking * 1000))}
        start = time.perf_counter()
        status, data = client.post_json(f"/api/assignments/{lease['id']}/ranking/", payload)
        log["submit"].append(time.perf_counter() - start)
        assert status == 200, (status, data[:300])
        log["acked"].append((lease["prompt_id"], client.username, tiers))


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"n={len(values):6d}  p50={q[49] * 1000:6.1f} ms  p95={q[94] * 1000:6.1f} ms  p99={q[98] * 1000:6.1f} ms"


def check_nothing_lost(acked: list, args: argparse.Namespace) -> list[str]:
    from django.db.models import Count

    from annotation.models import PairwiseComparison, Ranking

    problems = []
    stored = {(r.prompt_id, r.labeler.username): r for r in Ranking.objects.select_related("labeler").prefetch_related("entries")}
    if len(stored) != len(acked):
        problems.append(f"{len(acked)} submits acknowledged but {len(stored)} rankings stored")
    expected_pairs = 0
    for prompt_id, username, tiers in acked:
        pairs = {(a, b) for i, j in combinations(range(len(tiers)), 2) for a in tiers[i] for b in tiers[j]}
        expected_pairs += len(pairs)
        ranking = stored.get((prompt_id, username))
        if ranking is None:
            problems.append(f"lost: {username}'s ranking of prompt {prompt_id}")
            continue
        got = set(PairwiseComparison.objects.filter(ranking=ranking).values_list("chosen_id", "rejected_id"))
        if got != pairs:
            problems.append(f"ranking {ranking.pk}: pairs differ from the submitted tiers")
    if PairwiseComparison.objects.count() != expected_pairs:
        problems.append(f"{PairwiseComparison.objects.count()} pairs stored, {expected_pairs} expected")
    over = Ranking.objects.values("prompt").annotate(n=Count("id")).filter(n__gt=args.overlap).count()
    if over:
        problems.append(f"{over} prompts have more than {args.overlap} rankings")
    return problems


def main() -> int:
    args = parse_args()
    setup_database(args)
    port = free_port()
    server = start_gunicorn(port, args)
    log: dict[str, list] = {"fetch": [], "submit": [], "acked": []}
    try:
        clients = [Labeler(port, f"load{i}") for i in range(args.labelers)]
        for client in clients:
            client.login()
        load_before = os.getloadavg()
        deadline = time.monotonic() + args.duration
        threads = [threading.Thread(target=run_labeler, args=(c, i, deadline, log, args.think))
                   for i, c in enumerate(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.duration + 4 * args.think + 60)
        elapsed = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    load_after = os.getloadavg()
    think = f"think time median {args.think:g} s" if args.think else "zero think time"
    print(f"{args.labelers} labelers, {think}, {elapsed:.1f} s, gunicorn gthread {args.workers}x{args.threads}, "
          f"K={args.k}, overlap={args.overlap}, {args.prompts} prompts, {os.cpu_count()} CPUs")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"fetch  (POST assignments/next): {percentiles(log['fetch'])}  {len(log['fetch']) / elapsed:7.1f} req/s")
    print(f"submit (POST ranking)         : {percentiles(log['submit'])}  {len(log['submit']) / elapsed:7.1f} req/s")
    problems = check_nothing_lost(log["acked"], args)
    print(f"checked {len(log['acked'])} acknowledged submits: " + ("nothing lost or duplicated" if not problems else "FAILED"))
    for problem in problems[:20]:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
