"""The child side of a training run: ``python -m training.runner RUN_ID`` runs one claimed run's job.

``main`` sets up Django and calls ``run_claimed``: it runs the kind's job with hooks that write to the
database, and in one transaction registers the artifact and marks the run succeeded (fenced by the claim
token). It exits with the codes of ``training.run_process`` (0 succeeded, 2 failed for good, 3 cancelled, 4
claim lost), which the parent side, ``training.supervisor``, maps to the run's outcome. Checkpoints live in
``ARTIFACT_ROOT/runs/<id>/checkpoints``, so a new attempt resumes from the last one.
"""
from __future__ import annotations

import os
import sys
import traceback

from training.run_process import EXIT_CANCELLED, EXIT_CLAIM_LOST, EXIT_FAILED, EXIT_OK


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
    from training import services
    from training.jobs import job_for_kind
    from training.artifact_paths import run_output_dir
    from training.jobs.base import JobFailed, artifact_fields
    from training.ml.config import ConfigError  # a missing model, LoRA targets the model lacks (ml.config.loading)
    from training.models import TrainingRun

    run = TrainingRun.objects.select_related("project", "snapshot", "base_artifact").get(pk=run_id)
    if run.claim_token != claim_token or run.status != TrainingRun.Status.RUNNING:
        return EXIT_CLAIM_LOST
    hooks = DatabaseHooks(run_id, claim_token)
    output_dir = run_output_dir(run_id=run.pk)
    try:
        result = job_for_kind(run.kind).run(run, output_dir, hooks)
    except (JobFailed, InvalidInput, ConfigError) as error:  # permanent: no retry can heal these
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
                **artifact_fields(result),
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
