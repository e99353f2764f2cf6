"""Redis restarted while training runs are queued loses none of them (issue 6, Faults).

The queue messages live only in Redis; the runs live in PostgreSQL. After a restart without persistence
the messages are gone, so ``runs_reconcile`` (Celery beat, every minute) re-sends every QUEUED run that
nobody claimed, from the database, and a real worker then finishes each run exactly once.

The broker is a private ``redis-server`` (no persistence) on a free loopback port, killed with SIGKILL and
started again: a real restart that touches no other test's Redis. Where no ``redis-server`` binary is
installed (e.g. CI with a Redis service), the test's own broker database (``TEST_REDIS_URL``, DB 15 by
default) is emptied with FLUSHDB instead — the same loss, never FLUSHALL.
"""
import os
import shutil
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from training import services
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.tests.conftest import WorkerProcesses, rank_all

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = TrainingRun.Status
REPO = Path(__file__).resolve().parents[2]
CONFIG = {"batch_size": 4, "learning_rate": 3e-3, "eval_every": 10, "checkpoint_every": 5, "eval_fraction": 0.25,
          "max_length": 64, "num_threads": 1, "max_steps": 6}
RUNS = 2


class Broker:
    """The Redis the test's producer and worker share, and how to restart it (losing every message)."""

    def __init__(self, tmp_path: Path, fallback_url: str) -> None:
        self.binary = shutil.which("redis-server")
        self.dir = tmp_path / "redis"
        self.process: subprocess.Popen | None = None
        if self.binary:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.dir.mkdir()
            self.start()
        else:
            self.url = fallback_url

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def restart(self) -> None:
        if self.process is None:
            redis.Redis.from_url(self.url).flushdb()  # the test's own DB only
            return
        self.process.kill()  # SIGKILL: no shutdown save (and persistence is off anyway)
        self.process.wait()
        self.start()

    def queued_messages(self) -> int:
        client = redis.Redis.from_url(self.url)
        return sum(client.llen(key) for key in client.scan_iter("gpu*") if client.type(key) == b"list")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def broker(tmp_path, settings):
    if connection.vendor != "postgresql" or not getattr(settings, "USING_REDIS", False):
        pytest.skip("needs the PostgreSQL test database and Redis shared with a worker process")
    from webapp.celery import app

    broker = Broker(tmp_path, settings.CELERY_BROKER_URL)
    saved = app.conf.broker_url
    _point_celery_at(app, broker.url)
    yield broker
    _point_celery_at(app, saved)
    broker.stop()


def _point_celery_at(app, broker_url: str) -> None:
    """Make this process's producer send to another broker: drop the pooled connections (as Celery does
    after a fork) so the next send connects to the new URL. (Results are not read here.)"""
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    pools.reset()  # kombu keeps one pool per broker process-wide: drop the closed ones, or a later send fails
    app._after_fork()
    app.conf.broker_url = broker_url


@pytest.fixture
def start_worker(broker, tmp_path, settings, monkeypatch):
    var = tmp_path / "var"
    monkeypatch.setenv("RLHF_VAR_DIR", str(var))
    settings.ARTIFACT_ROOT = var / "test-artifacts"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test", "TEST_PG_NAME": connection.settings_dict["NAME"],
           "TEST_REDIS_URL": broker.url, "RLHF_RUN_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1"}
    workers = WorkerProcesses(env=env, log_dir=tmp_path, name="redis-restart")
    yield workers.start
    workers.stop_all()


def _wait_all(run_ids: list[int], timeout: float = 240.0) -> list[TrainingRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(TrainingRun.objects.filter(pk__in=run_ids).order_by("pk"))
        if all(run.is_terminal for run in runs):
            return runs
        time.sleep(0.1)
    raise AssertionError("timed out: " + ", ".join(f"run {r.pk} {r.status} step {r.step}" for r in runs))


def test_redis_restart_with_queued_runs_loses_none(broker, start_worker, make_user, make_project):
    labeler = make_user("lars")
    project = make_project(slug="redis-restart", k=4, prompts=16, labelers=[labeler])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", project.slug, "--hidden", "32", "--vocab-size", "300")
    base = ModelArtifact.objects.get(project=project, name="tiny-reward-model")

    run_ids = [services.run_create(project=project, kind="reward", config=CONFIG, base_artifact=base).pk
               for _ in range(RUNS)]
    assert broker.queued_messages() == RUNS  # sent on commit, waiting in Redis: no worker yet

    broker.restart()
    assert broker.queued_messages() == 0  # the messages are gone ...
    assert set(TrainingRun.objects.filter(pk__in=run_ids).values_list("status", flat=True)) == {Status.QUEUED}

    later = timezone.now() + services.QUEUED_RESEND_AFTER + timedelta(seconds=1)
    assert services.runs_reconcile(now=later) == RUNS  # ... and re-sent from the database
    assert broker.queued_messages() == RUNS
    assert services.runs_reconcile(now=later) == 0  # backing off: no duplicate messages

    start_worker()
    runs = _wait_all(run_ids)
    for run in runs:
        assert run.status == Status.SUCCEEDED, run.error + run.log_tail
        assert run.attempts == 1 and run.step == run.total_steps == CONFIG["max_steps"]
        steps = list(MetricPoint.objects.filter(run=run, split="train").values_list("step", flat=True))
        assert sorted(steps) == list(range(1, CONFIG["max_steps"] + 1))  # every step once: ran exactly once
        assert ModelArtifact.objects.filter(run=run).count() == 1
    assert broker.queued_messages() == 0
