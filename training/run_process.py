"""What the supervisor (``training.supervisor``, the parent in the worker) and the training process
(``training.runner``, the child) agree on: the child's exit codes, and that the child dies with its parent.

Exit codes: 0 succeeded, 2 failed for good (bad data, a config error: no retry), 3 cancelled (all three
written to the run by the child itself), 4 claim lost (another worker owns the run); anything else is a
crash, which the supervisor retries.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

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
