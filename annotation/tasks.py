"""Celery tasks of the annotation app: thin wrappers over services."""
from celery import shared_task


@shared_task(name="annotation.tasks.expire_leases")
def expire_leases() -> int:
    from annotation.services import assignment_expire_stale

    return assignment_expire_stale()

