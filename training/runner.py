"""Runs one claimed training run in its own process, and supervises that process from the Celery task.

Parent side (``supervise``, called by ``training.tasks.execute_run`` after it won ``run_claim``): starts
``python -m training.runner RUN_ID`` with the claim token in its environment and PR_SET_PDEATHSIG, so
the child dies with the worker; heartbeats while the child lives; stops it if a cancel is not honoured
within a grace period; re-queues the run when the worker is shutting down (SIGTERM); and maps the exit
code: 0 succeeded, 2 failed for good (bad data, a config error such as a missing model or LoRA target
modules the model lacks: no retry), 3 cancelled (all three written by the child), 4 claim lost,
anything else (a crash, an OOM kill) → ``run_retry_or_fail``. GPU memory comes back with the process.

Child side (``main``): sets up Django, runs the kind's job with hooks that write to the database, and
in one transaction registers the artifact and marks the run succeeded (fenced by the claim token).
Checkpoints live in ``ARTIFACT_ROOT/runs/<id>/checkpoints``, so a new attempt resumes from the last one.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_CLAIM_LOST = 0, 2, 3, 4
HEARTBEAT_SECONDS = float(os.environ.get("RLHF_RUN_HEARTBEAT_SECONDS", "5"))
CANCEL_GRACE_SECONDS = float(os.environ.get("RLHF_RUN_CANCEL_GRACE_SECONDS", "120"))
TERMINATE_GRACE_SECONDS = 30.0

# Set by training.tasks when Celery's worker starts a warm shutdown (solo/threads pools run the task in
# the main process, where this flag is visible).
worker_shutting_down = threading.Event()


# ----------------------------------------------------------------------------- parent: supervise
def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the child when the thread that started it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


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


def child_environment(*, claim_token: str) -> dict[str, str]:
    """The training process's environment: the claim token, and the HF libraries offline unless the operator
    allows the model hub (``training.model_sources.offline_environment``), whatever the worker inherited."""
    from training.model_sources import offline_environment

    return {**os.environ, **offline_environment(), "RLHF_CLAIM_TOKEN": claim_token, "PYTHONUNBUFFERED": "1"}


def supervise(*, run_id: int, claim_token: str, attempt: int) -> str:
    """Run the claimed run in a child process until it ends; returns a short outcome for the task result."""
    from training import services
    from training.jobs import run_output_dir
    from training.models import TrainingRun

    run = TrainingRun.objects.get(pk=run_id)
    log_path = run_output_dir(run) / "logs" / f"attempt-{attempt}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = child_environment(claim_token=claim_token)
    from training.distributed_runner import child_command  # one process, or one per GPU through accelerate

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            child_command(run_id=run_id, kind=run.kind), env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent, cwd=str(Path(__file__).resolve().parent.parent),
        )
    services.run_append_log(run_id=run_id, message=f"attempt {attempt}: training process {proc.pid} started",
                            claim_token=claim_token)
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
    from training import services
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


# ----------------------------------------------------------------------------- child: run the job
class DatabaseHooks:
    """TrainHooks that write progress to the run's row (fenced by the claim token) and echo to stdout."""

    def __init__(self, run_id: int, claim_token: str) -> None:
        self.run_id, self.claim_token = run_id, claim_token
        self.claim_lost = False

    def on_step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        from training.services import run_report_step

        if not run_report_step(run_id=self.run_id, step=step, total=total, metrics=metrics,
                               claim_token=self.claim_token):
            self.claim_lost = True

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        from training.services import run_report_eval

        run_report_eval(run_id=self.run_id, step=step, metrics=metrics, claim_token=self.claim_token)
        self.log(f"eval at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def should_stop(self) -> bool:
        from training.selectors import run_should_stop

        return self.claim_lost or run_should_stop(run_id=self.run_id, claim_token=self.claim_token)

    def log(self, message: str) -> None:
        from training.services import run_append_log

        print(message, flush=True)
        run_append_log(run_id=self.run_id, message=message, claim_token=self.claim_token)


def run_claimed(*, run_id: int, claim_token: str) -> int:
    """Run the job of a run this process's parent claimed; returns the exit code (see module docstring)."""
    from django.db import transaction

    from annotation.errors import InvalidInput
    from training import jobs, services
    from training.ml.config import ConfigError  # a missing model, LoRA targets the model lacks (ml.config.loading)
    from training.models import TrainingRun

    run = TrainingRun.objects.select_related("project", "snapshot", "base_artifact").get(pk=run_id)
    if run.claim_token != claim_token or run.status != TrainingRun.Status.RUNNING:
        return EXIT_CLAIM_LOST
    hooks = DatabaseHooks(run_id, claim_token)
    output_dir = jobs.run_output_dir(run)
    try:
        result = jobs.job_for_kind(run.kind).run(run, output_dir, hooks)
    except (jobs.JobFailed, InvalidInput, ConfigError) as error:  # permanent: no retry can heal these
        hooks.log(f"failed: {error}")
        services.run_finish(run_id=run_id, status=TrainingRun.Status.FAILED, summary={}, error=str(error),
                            claim_token=claim_token)
        return EXIT_FAILED
    if result.stopped:
        run.refresh_from_db()
        if not run.cancel_requested:
            return EXIT_CLAIM_LOST
        step = result.summary.get("steps", run.step)
        hooks.log(f"cancelled at step {step}; the last checkpoint is kept")
        services.run_finish(run_id=run_id, status=TrainingRun.Status.CANCELLED, summary=result.summary,
                            claim_token=claim_token, step=step)
        return EXIT_CANCELLED
    with transaction.atomic():
        if result.model_dir is not None:
            services.artifact_register(
                project=run.project, kind=result.artifact_kind, name=f"{run.kind}-run-{run.pk}", path=result.model_dir,
                run=run, snapshot=run.snapshot, parent=run.base_artifact,
                rounds=(run.snapshot.filters.get("rounds", []) if run.snapshot else []),
                metrics=_flat_metrics(result.summary), health=result.summary.get("health"),
                **jobs.artifact_fields(result),
            )
        if not services.run_finish(run_id=run_id, status=TrainingRun.Status.SUCCEEDED, summary=result.summary,
                                   claim_token=claim_token):
            transaction.set_rollback(True)
            return EXIT_CLAIM_LOST
    hooks.log("succeeded")
    return EXIT_OK


def _flat_metrics(summary: dict) -> dict:
    """Scalar figures of the summary plus the final held-out metrics as ``eval_<name>``."""
    flat = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat.update({f"eval_{k}": v for k, v in (summary.get("final_eval") or {}).items()})
    return flat


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m training.runner RUN_ID  (with RLHF_CLAIM_TOKEN set)", file=sys.stderr)
        return 64
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    import django

    django.setup()
    from training.model_sources import offline_environment

    os.environ.update(offline_environment())  # before any HF library is imported (also when started by hand)
    try:
        return run_claimed(run_id=int(argv[1]), claim_token=os.environ.get("RLHF_CLAIM_TOKEN", ""))
    except Exception:
        traceback.print_exc()  # the parent puts the tail of this log in the run's error
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
