"""A run on every device of its worker: ``python -m training.distributed_runner RUN_ID`` is one of its processes.

``child_command`` is what ``training.supervisor.supervise`` starts: ``python -m training.runner RUN_ID`` when the
run gets one process (one device, no device, or a kind whose trainer is not data-parallel), else
``accelerate launch … -m training.distributed_runner RUN_ID`` with one process per device
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
from training.run_process import EXIT_CANCELLED, EXIT_CLAIM_LOST, EXIT_FAILED, EXIT_OK, die_with_parent

# Kinds whose trainer shards its batches over processes and writes only from the main one (PPO: one process).
DATA_PARALLEL_KINDS = frozenset({"reward", "sft", "dpo", "grpo"})


def child_command(*, run_id: int, kind: str) -> list[str]:
    """The command line of the training process(es) of one run: one per device of every machine of the
    rendezvous (``RLHF_NUM_MACHINES`` …) for a data-parallel kind, else the plain one-process runner."""
    parallel = kind in DATA_PARALLEL_KINDS
    rendezvous = distributed.rendezvous_from_env() if parallel else distributed.Rendezvous()
    processes = distributed.num_processes() if parallel else 1
    if processes == 1 and rendezvous.num_machines == 1:
        return distributed.launch_command(1, ["training.runner", str(run_id)])
    return distributed.launch_command(
        processes, ["training.distributed_runner", str(run_id)], cuda=distributed.cuda_device_count() > 0,
        rendezvous=rendezvous, config_file=distributed.accelerate_config_file(),
    )


def run_other_process(*, run_id: int, claim_token: str) -> int:
    """A non-main process: train alongside the main one, write nothing to the database."""
    from annotation.errors import InvalidInput
    from training import jobs
    from training.ml.config import ConfigError
    from training.ml.types import NullHooks
    from training.models import TrainingRun

    run = TrainingRun.objects.select_related("project", "snapshot", "base_artifact").get(pk=run_id)
    if run.claim_token != claim_token or run.status != TrainingRun.Status.RUNNING:
        return 0  # the main process sees the same and says so
    try:
        jobs.job_for_kind(run.kind).run(run, jobs.run_output_dir(run), NullHooks())
    except (jobs.JobFailed, InvalidInput, ConfigError):
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
