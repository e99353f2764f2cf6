"""End to end with a REAL Celery worker process (solo pool, queues gpu and default) on the test database:
a run succeeds and its model loads; a worker SIGKILLed mid-run and started again resumes from the
checkpoint and finishes exactly once; SIGTERM hands the run back to the queue; cancel keeps a checkpoint.
"""
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from training import services
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.artifact_paths import artifact_dir
from training.tests.conftest import WorkerProcesses, rank_all

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = TrainingRun.Status
REPO = Path(__file__).resolve().parents[2]
CONFIG = {"batch_size": 4, "learning_rate": 3e-3, "eval_every": 10, "checkpoint_every": 5, "eval_fraction": 0.25,
          "max_length": 64, "num_threads": 1}


@pytest.fixture
def worker_env(tmp_path, settings, monkeypatch):
    if connection.vendor != "postgresql" or not getattr(settings, "USING_REDIS", False):
        pytest.skip("needs the PostgreSQL test database and Redis shared with a worker process")
    var = tmp_path / "var"
    monkeypatch.setenv("RLHF_VAR_DIR", str(var))
    settings.ARTIFACT_ROOT = var / "test-artifacts"
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.test", "TEST_PG_NAME": connection.settings_dict["NAME"],
            "RLHF_RUN_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def start_worker(worker_env, tmp_path):
    workers = WorkerProcesses(env=worker_env, log_dir=tmp_path, name="e2e")
    yield workers.start
    workers.stop_all()


@pytest.fixture
def e2e_project(make_user, make_project, worker_env):
    labeler = make_user("lars")
    project = make_project(slug="e2e", k=4, prompts=16, labelers=[labeler])
    rank_all(project, labeler)
    call_command("build_tiny_models", "--project", "e2e", "--hidden", "32", "--vocab-size", "300")
    return project, ModelArtifact.objects.get(project=project, name="tiny-reward-model")


def _wait(run_id: int, until, timeout: float = 180.0) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = TrainingRun.objects.get(pk=run_id)
        if until(run):
            return run
        time.sleep(0.05)
    raise AssertionError(f"timed out: {run.status} step {run.step}/{run.total_steps}\n{run.log_tail}\n{run.error}")


def _child_pids(run: TrainingRun) -> list[int]:
    return [int(pid) for pid in re.findall(r"training process (\d+) started", run.log_tail)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_a_run_succeeds_on_a_real_worker_and_its_model_loads(e2e_project, start_worker):
    from transformers import AutoModelForSequenceClassification

    project, base = e2e_project
    start_worker()
    run = services.run_create(project=project, kind="reward", config={**CONFIG, "epochs": 4.0}, base_artifact=base)
    run = _wait(run.pk, lambda r: r.is_terminal)
    assert run.status == Status.SUCCEEDED, run.error + run.log_tail
    assert run.attempts == 1 and run.step == run.total_steps == 12
    losses = [p.values["loss"] for p in MetricPoint.objects.filter(run=run, split="train").order_by("step")]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0]
    model = AutoModelForSequenceClassification.from_pretrained(artifact_dir(artifact=run.artifact))
    assert model.config.num_labels == 1


def test_sigkilled_worker_resumes_from_checkpoint_exactly_once(e2e_project, start_worker, settings):
    project, base = e2e_project
    worker = start_worker()
    run = services.run_create(project=project, kind="reward", config={**CONFIG, "max_steps": 400}, base_artifact=base)
    run = _wait(run.pk, lambda r: r.step >= 12)
    worker.kill()  # SIGKILL: no cleanup at all
    worker.wait()
    (child,) = _child_pids(run)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the training process must die with its worker (PR_SET_PDEATHSIG)"
    killed = TrainingRun.objects.get(pk=run.pk)
    killed_at = killed.step
    assert killed.status == Status.RUNNING, (killed.status, killed.log_tail)
    later = timezone.now() + timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS + 1)
    assert services.runs_reconcile(now=later) == 1  # stale heartbeat → queued again, message re-sent
    assert TrainingRun.objects.get(pk=run.pk).status == Status.QUEUED
    start_worker()
    run = _wait(run.pk, lambda r: r.is_terminal, timeout=300)
    assert run.status == Status.SUCCEEDED, run.error + run.log_tail
    assert run.attempts == 2 and run.step == run.total_steps == 400 and killed_at < 400
    assert re.search(r"resumed from step-0*(\d+)", run.log_tail)
    steps = list(MetricPoint.objects.filter(run=run, split="train").values_list("step", flat=True))
    assert sorted(steps) == list(range(1, 401))  # every step stored once
    assert ModelArtifact.objects.filter(run=run).count() == 1
    assert len(_child_pids(run)) == 2


def test_sigterm_requeues_and_cancel_keeps_a_checkpoint(e2e_project, start_worker):
    project, base = e2e_project
    worker = start_worker()
    run = services.run_create(project=project, kind="reward", config={**CONFIG, "max_steps": 400}, base_artifact=base)
    _wait(run.pk, lambda r: r.step >= 3)
    worker.send_signal(signal.SIGTERM)  # warm shutdown
    assert worker.wait(timeout=60) == 0
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == Status.QUEUED and run.attempts == 0 and "re-queued" in run.log_tail
    stopped_at = run.step
    start_worker()
    run = _wait(run.pk, lambda r: r.status == Status.RUNNING and r.step >= stopped_at + 3)
    services.run_request_cancel(run_id=run.pk)
    run = _wait(run.pk, lambda r: r.is_terminal)
    assert run.status == Status.CANCELLED and stopped_at + 3 <= run.step < 400 and run.attempts == 1
    checkpoints = Path(django_settings.ARTIFACT_ROOT) / "runs" / str(run.pk) / "checkpoints"
    saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert saved and saved[-1] == run.step, (saved, run.log_tail)
    assert not ModelArtifact.objects.filter(run=run).exists()


def test_the_worker_check_sees_a_real_worker_on_the_gpu_queue(worker_env, start_worker):
    from training.workers import workers_consuming

    assert workers_consuming(timeout=1.0) == []
    start_worker()
    deadline = time.monotonic() + 60
    while not (names := workers_consuming(timeout=1.0)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == 1 and names[0].startswith("e2e-")
