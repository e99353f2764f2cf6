"""A run on every device of its worker: ``python -m training.distributed_runner RUN_ID`` is one of its processes.

``training.run_process.child_command`` says what ``training.supervisor.supervise`` starts: ``python -m
training.runner RUN_ID`` when the run gets one process (one device, no device, or a kind whose trainer is not
data-parallel), else ``accelerate launch … -m training.distributed_runner RUN_ID`` with one process per device
(``training.ml.distributed.num_processes``: every CUDA device, or ``RLHF_NUM_PROCESSES``).

Under the launcher, the main process (rank 0) is the usual child, ``training.runner.main``: it checks the
claim, reports progress, registers the artifact and finishes the run. The other processes read the same run
and snapshot and run the same job with hooks that write nothing (the trainer calls hooks, asks for cancel
and writes files on the main process only). They die with the launcher (PR_SET_PDEATHSIG), which dies with
the worker.

Exit codes: torchrun turns any non-zero exit into exit 1 of the launcher, so the main process exits 0 once
it has written the outcome to the run itself (succeeded, failed for good, cancelled, claim lost) and the
supervisor reads that outcome from the run; a crash still exits non-zero and the run is retried.
"""
from __future__ import annotations

import os
import sys

from training.ml import distributed
from training.run_process import EXIT_CANCELLED, EXIT_CLAIM_LOST, EXIT_FAILED, EXIT_OK, child_command, die_with_parent

def run_other_process(*, run_id: int, claim_token: str) -> int:
    """A non-main process: train alongside the main one, write nothing to the database."""
    from annotation.errors import InvalidInput
    from training.jobs import job_for_kind
    from training.artifact_paths import run_output_dir
    from training.jobs.base import JobFailed
    from training.ml.config import ConfigError
    from training.ml.types import NullHooks
    from training.models import TrainingRun

    run = TrainingRun.objects.select_related("project", "snapshot", "base_artifact").get(pk=run_id)
    if run.claim_token != claim_token or run.status != TrainingRun.Status.RUNNING:
        return 0  # the main process sees the same and says so
    try:
        job_for_kind(run.kind).run(run, run_output_dir(run_id=run.pk), NullHooks())
    except (JobFailed, InvalidInput, ConfigError):
        pass  # bad data or config: the main process hits the same error and fails the run
    return 0


def follow(run_id: int) -> int:
    """Machines 1… of a multi-machine run: ``python -m training.distributed_runner follow RUN_ID`` starts this
    machine's processes (its ``RLHF_MACHINE_RANK``), which meet machine 0's at the rendezvous and write nothing."""
    import subprocess

    from training.models import TrainingRun
    from training.run_process import child_environment

    run = TrainingRun.objects.get(pk=run_id)
    command = child_command(run_id=run_id, kind=run.kind)
    print(" ".join(command), flush=True)
    return subprocess.run(command, env=child_environment(claim_token=run.claim_token or "")).returncode


def main(argv: list[str]) -> int:
    from training import runner

    if len(argv) == 3 and argv[1] == "follow" and argv[2].isdigit():
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
        import django

        django.setup()
        return follow(int(argv[2]))
    die_with_parent()  # the launcher's death (the worker's) ends this process too
    if distributed.process_rank() == 0:
        code = runner.main(argv)
        handled = (EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_CLAIM_LOST)
        return 0 if code in handled else code
    if len(argv) != 2 or not argv[1].isdigit():
        return 64
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    import django

    django.setup()
    return run_other_process(run_id=int(argv[1]), claim_token=os.environ.get("RLHF_CLAIM_TOKEN", ""))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
