"""Celery tasks of the annotation app: thin wrappers over services."""
from celery import shared_task


@shared_task(name="annotation.tasks.expire_leases")
def expire_leases() -> int:
    from annotation.services import assignment_expire_stale

    return assignment_expire_stale()


@shared_task(name="annotation.tasks.generate_arena", acks_late=True, reject_on_worker_lost=True)
def generate_arena(arena_id: int) -> str:
    """Generate an arena's responses from its two checkpoints (``gpu`` queue); a redelivery does nothing more."""
    from annotation.arena import arena_generate_by_id

    return arena_generate_by_id(arena_id=arena_id)
