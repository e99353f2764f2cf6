"""The parent side of a training run: supervises the training process from the Celery task (or the CLI).

``supervise`` (called by ``training.tasks.execute_run`` after it won ``run_claim``, and by ``training.loop``):
starts the run's training process — ``training.run_process.child_command``: ``python -m
training.runner RUN_ID``, or one process per GPU through accelerate — with the claim token in its
environment and PR_SET_PDEATHSIG, so the child dies with the worker; heartbeats while the child lives;
stops it if a cancel is not honoured within a grace period; re-queues the run when the worker is shutting
down (SIGTERM); and maps the exit code (``training.run_process``): 0 succeeded, 2 failed for good, 3
cancelled (all three written by the child), 4 claim lost, anything else (a crash, an OOM kill) →
``run_retry_or_fail``. GPU memory comes back with the process. The child side is ``training.runner``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from training import services
from training.run_process import (
    EXIT_CANCELLED, EXIT_CLAIM_LOST, EXIT_FAILED, EXIT_OK, child_command, child_environment, die_with_parent,
)

HEARTBEAT_SECONDS = float(os.environ.get("RLHF_RUN_HEARTBEAT_SECONDS", "5"))
CANCEL_GRACE_SECONDS = float(os.environ.get("RLHF_RUN_CANCEL_GRACE_SECONDS", "120"))
TERMINATE_GRACE_SECONDS = 30.0

# Set by training.tasks when Celery's worker starts a warm shutdown (solo/threads pools run the task in
# the main process, where this flag is visible).
worker_shutting_down = threading.Event()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def supervise(*, run_id: int, claim_token: str, attempt: int) -> str:
    """Run the claimed run in a child process until it ends; returns a short outcome for the task result."""
    from training.artifact_paths import run_log_path
    from training.models import TrainingRun

    run = TrainingRun.objects.get(pk=run_id)
    log_path = run_log_path(run_id=run_id, attempt=attempt)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = child_environment(claim_token=claim_token)
    command = child_command(run_id=run_id, kind=run.kind)  # one process, or one per GPU
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, cwd=str(Path(__file__).resolve().parent.parent),
        )
    services.run_append_log(run_id=run_id, claim_token=claim_token,  # which machine ran each attempt stays in the log
                            message=f"attempt {attempt} on {run.worker or '?'}: training process {proc.pid} started")
    cancel_seen_at = None
    while True:
        try:
            code = proc.wait(HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            pass
        if worker_shutting_down.is_set() or _celery_stopping():
            _stop(proc)
            services.run_requeue(run_id=run_id, claim_token=claim_token, reason="the worker is shutting down")
            return "requeued"
        if not services.run_heartbeat(run_id=run_id, claim_token=claim_token):
            # Either the child has just finished the run itself (it is exiting) or another worker took the
            # run over: give the child a moment, then stop it; _on_exit sorts out which it was.
            try:
                code = proc.wait(TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                code = _stop(proc)
            break
        if TrainingRun.objects.filter(pk=run_id, cancel_requested=True).exists():
            cancel_seen_at = cancel_seen_at or time.monotonic()
            if time.monotonic() - cancel_seen_at > CANCEL_GRACE_SECONDS:
                _stop(proc)
                services.run_finish(run_id=run_id, status=TrainingRun.Status.CANCELLED, summary={"stopped": True},
                                    error="Cancelled: the training process did not stop by itself.",
                                    claim_token=claim_token)
                return "cancelled (forced)"
    return _on_exit(run_id=run_id, claim_token=claim_token, code=code, log_path=log_path)


def _on_exit(*, run_id: int, claim_token: str, code: int, log_path: Path) -> str:
    from training.models import TrainingRun

    if code in (EXIT_OK, EXIT_FAILED, EXIT_CANCELLED):
        run = TrainingRun.objects.get(pk=run_id)
        if run.is_terminal:
            return run.status
        code = -1 if code == EXIT_OK else code  # the child said it finished but did not: treat as a crash
    if code == EXIT_CLAIM_LOST:
        return "claim lost"
    how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    error = f"The training process {how}{hint}.\n{_log_tail(log_path)}".strip()
    services.run_append_log(run_id=run_id, message=error.splitlines()[0], claim_token=claim_token)
    run = services.run_retry_or_fail(run_id=run_id, error=error, claim_token=claim_token)
    return run.status if run else "claim lost"


def _celery_stopping() -> bool:
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover
        return False
    return bool(state.should_stop not in (None, False) or state.should_terminate not in (None, False))
