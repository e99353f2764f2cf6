"""Celery tasks of the lab app: thin wrappers over services.

The arena task keeps the name it had when it lived in ``annotation/tasks.py``, so messages already queued
under that name (and the ``gpu`` route in ``CELERY_TASK_ROUTES``) still find it."""
from celery import shared_task


@shared_task(name="annotation.tasks.generate_arena", acks_late=True, reject_on_worker_lost=True)
def generate_arena(arena_id: int) -> str:
    """Generate an arena's responses from its two checkpoints (``gpu`` queue); a redelivery does nothing more."""
    from lab.services import arena_generate_by_id

    return arena_generate_by_id(arena_id=arena_id)


def arena_generation_enqueue(arena_id: int) -> None:
    """Send an arena's generation to the ``gpu`` queue; ``lab.services`` calls this on commit."""
    generate_arena.delay(arena_id)
