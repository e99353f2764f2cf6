"""Celery tasks of the training app: APIs over services that take ids.

Services enqueue a run on commit through ``run_enqueue``, which ``TrainingConfig.ready`` registers with
``training.services`` (so services never import this module)."""
import os
import socket

from celery import shared_task
from celery.signals import worker_init, worker_shutting_down


@worker_init.connect
def _models_offline(**kwargs) -> None:
    """The worker and every training process it starts never reach a model hub (HF_HUB_OFFLINE,
    TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE), unless the operator set RLHF_ALLOW_MODEL_HUB."""
    from training.model_sources import offline_environment

    os.environ.update(offline_environment())


@worker_shutting_down.connect
def _note_worker_shutdown(**kwargs) -> None:
    """Warm shutdown (SIGTERM): the run being supervised is handed back to the queue, not lost."""
    from training.supervisor import worker_shutting_down as flag

    flag.set()


@shared_task(name="training.tasks.execute_run", acks_late=True, reject_on_worker_lost=True)
def execute_run(run_id: int) -> str:
    """Claim the run (a duplicate or redelivered message of a live run does nothing) and supervise it."""
    from training.supervisor import supervise
    from training.services import run_claim

    run = run_claim(run_id=run_id, worker=f"{socket.gethostname()}:{os.getpid()}")
    if run is None:
        return "not claimed"
    return supervise(run_id=run.id, claim_token=run.claim_token, attempt=run.attempts)


def run_enqueue(run_id: int) -> None:
    """Send a run to its worker queue (``gpu``); ``training.services`` calls this on commit."""
    execute_run.delay(run_id)


@shared_task(name="training.tasks.reconcile_runs")
def reconcile_runs() -> int:
    from training.services import runs_reconcile

    return runs_reconcile()
