"""Concurrency and faults on the real PostgreSQL: 50 labelers at once with overlap 3, and a gunicorn web
process SIGKILLed in the middle of submits. Nothing may be lost, doubled or half written."""
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from itertools import combinations

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count

from annotation.models import Assignment, PairwiseComparison, Ranking, RankingEntry
from annotation.services import assignment_next_for_labeler, ranking_submit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
needs_postgres = pytest.mark.skipif(not settings.USING_POSTGRES, reason="row locks and processes need PostgreSQL")


def random_tiers(sample_ids: list[int], rng: random.Random) -> list[list[int]]:
    """A random ranking with random ties: shuffle, then cut into 1..K tiers."""
    order = sample_ids[:]
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, len(order)), rng.randint(0, len(order) - 1)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]


def pairs_of(tiers: list[list[int]]) -> set[tuple[int, int]]:
    return {(a, b) for i, j in combinations(range(len(tiers)), 2) for a in tiers[i] for b in tiers[j]}


def assert_every_ranking_whole(k: int) -> None:
    """Each ranking has its K entries and exactly the pairs its tiers imply; no pair twice; leases agree."""
    for ranking in Ranking.objects.prefetch_related("entries", "pairs"):
        entries = list(ranking.entries.all())
        assert len(entries) == k, ranking.pk
        tiers: dict[int, list[int]] = {}
        for entry in entries:
            tiers.setdefault(entry.tier, []).append(entry.sample_id)
        expected = pairs_of([tiers[t] for t in sorted(tiers)])
        stored = [(p.chosen_id, p.rejected_id) for p in ranking.pairs.all()]
        assert len(stored) == len(set(stored)) and set(stored) == expected, ranking.pk
    assert not RankingEntry.objects.filter(ranking__isnull=True).exists()
    submitted = set(Assignment.objects.filter(status=Assignment.Status.SUBMITTED).values_list("pk", flat=True))
    assert submitted == set(Ranking.objects.exclude(assignment=None).values_list("assignment_id", flat=True))


@needs_postgres
def test_fifty_concurrent_labelers_with_overlap_three(make_user, make_project):
    k, overlap, n_prompts, n_labelers = 4, 3, 30, 50
    labelers = [make_user(f"c{i}") for i in range(n_labelers)]
    project = make_project(slug="crowd", k=k, overlap=overlap, prompts=n_prompts, labelers=labelers)
    submitted: dict[tuple[int, int], list[list[int]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_labelers)

    def labeler_loop(labeler, seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()  # everyone asks at the same moment
            while (assignment := assignment_next_for_labeler(project=project, labeler=labeler)) is not None:
                tiers = random_tiers(list(assignment.shown_order), rng)
                ranking_submit(assignment_id=assignment.pk, labeler=labeler, tiers=tiers, time_spent_ms=1)
                key = (assignment.prompt_id, labeler.pk)
                assert key not in submitted, f"labeler {labeler.pk} got prompt {assignment.prompt_id} twice"
                submitted[key] = tiers
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=labeler_loop, args=(u, i)) for i, u in enumerate(labelers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    per_prompt = {}
    for prompt_id, _ in submitted:
        per_prompt[prompt_id] = per_prompt.get(prompt_id, 0) + 1
    assert len(per_prompt) == n_prompts and set(per_prompt.values()) == {overlap}
    assert Ranking.objects.filter(prompt__project=project).count() == n_prompts * overlap
    assert Ranking.objects.values("prompt", "labeler").distinct().count() == n_prompts * overlap
    expected_pairs = sum(len(pairs_of(t)) for t in submitted.values())  # Σ C(K,2) − ties
    assert PairwiseComparison.objects.count() == expected_pairs
    assert PairwiseComparison.objects.values("ranking", "chosen", "rejected").distinct().count() == expected_pairs
    ties = sum(len(t) * (len(t) - 1) // 2 for tiers in submitted.values() for t in tiers)
    assert expected_pairs == len(submitted) * k * (k - 1) // 2 - ties
    assert_every_ranking_whole(k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(port: int, *, workers: int = 2, threads: int = 4) -> subprocess.Popen:
    """gunicorn on loopback against the test database, in its own process group (so we can SIGKILL it all)."""
    db = settings.DATABASES["default"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "DATABASE_CONN_MAX_AGE": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", str(workers),
         "--threads", str(threads), "--log-level", "warning"],
        cwd=str(settings.BASE_DIR), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("gunicorn did not start: " + process.stderr.read().decode()[-2000:])


def api(port: int, path: str, user: str, body: dict | None = None) -> tuple[int, dict | None]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        return error.code, None


@needs_postgres
def test_sigkilled_web_process_leaves_whole_rankings_or_none(make_user, make_project):
    k, n_labelers = 5, 12
    labelers = [make_user(f"w{i}") for i in range(n_labelers)]
    project = make_project(slug="crash", k=k, overlap=2, prompts=60, labelers=labelers)
    port = _free_port()
    server = start_gunicorn(port)
    pending: dict[str, tuple[int, list[list[int]]]] = {}  # labeler -> the submit in flight when the server died
    done = {"submits": 0}
    stop = threading.Event()

    def hammer(user: str, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                if user not in pending:
                    status, lease = api(port, f"/api/projects/{project.slug}/assignments/next/", user)
                    if status != 200:
                        return
                    pending[user] = (lease["id"], random_tiers(lease["shown_order"], rng))
                assignment_id, tiers = pending[user]
                status, _ = api(port, f"/api/assignments/{assignment_id}/ranking/", user, {"tiers": tiers})
                assert status == 200, status
                del pending[user]
                done["submits"] += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.05)  # the server is down: keep the submit pending and retry it later

    threads = [threading.Thread(target=hammer, args=(u.username, i), daemon=True) for i, u in enumerate(labelers)]
    try:
        for thread in threads:
            thread.start()
        while done["submits"] < 15:
            time.sleep(0.01)
        os.killpg(server.pid, signal.SIGKILL)  # master and workers, mid-request
        server.wait(timeout=10)
        connection.close()
        assert_every_ranking_whole(k)  # right after the crash: every ranking whole, or absent
        before_restart = Ranking.objects.count()
        server = start_gunicorn(port)
        while done["submits"] < before_restart + 15:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    connection.close()
    assert_every_ranking_whole(k)
    assert Ranking.objects.values("prompt", "labeler").distinct().count() == Ranking.objects.count()
    per_prompt = Ranking.objects.order_by().values("prompt").annotate(n=Count("id")).values_list("n", flat=True)
    assert max(per_prompt) <= 2  # overlap held across the crash and the retries
