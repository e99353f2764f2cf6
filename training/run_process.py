"""What the supervisor (``training.supervisor``, the parent in the worker) and the training process
(``training.runner``, the child) agree on: the child's command line (one process, or one per device through
``training.distributed_runner``), its environment, its exit codes, and that it dies with its parent.

Exit codes: 0 succeeded, 2 failed for good (bad data, a config error: no retry), 3 cancelled (all three
written to the run by the child itself), 4 claim lost (another worker owns the run); anything else is a
crash, which the supervisor retries.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from training.ml import distributed

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_CLAIM_LOST = 0, 2, 3, 4


def die_with_parent() -> None:
    """preexec_fn (or first call of a launched process): ask Linux to SIGKILL this process when the thread
    that started it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def child_environment(*, claim_token: str) -> dict[str, str]:
    """The training process's environment: the claim token, and the HF libraries offline unless the operator
    allows the model hub (``training.model_sources.offline_environment``), whatever the worker inherited."""
    from training.model_sources import offline_environment

    return {**os.environ, **offline_environment(), "RLHF_CLAIM_TOKEN": claim_token, "PYTHONUNBUFFERED": "1"}


# Kinds whose trainer shards its batches over processes and writes only from the main one (generation: one process).
DATA_PARALLEL_KINDS = frozenset({"reward", "sft", "dpo", "ppo", "grpo"})


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
