"""Which Celery workers consume a queue right now (asked over the broker's broadcast channel).

``python manage.py train_reward_model --wait`` and its siblings ask this before they queue a run they are
going to wait for: with no worker on the gpu queue the run would stay queued forever.
"""
from __future__ import annotations

GPU_QUEUE = "gpu"
# The command that starts a training worker next to the web app (as scripts/demo.sh does).
WORKER_COMMAND = ".venv/bin/celery -A webapp worker -n gpu@%h -Q gpu --pool solo --loglevel INFO"


def workers_consuming(*, queue: str = GPU_QUEUE, timeout: float = 2.0) -> list[str]:
    """Names of the workers that answer within ``timeout`` seconds and consume ``queue``; [] when none does."""
    from webapp.celery import app

    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # noqa: BLE001 - a broker that does not answer means no worker can consume either
        return []
    return sorted(name for name, queues in replies.items()
                  if any(q.get("name") == queue for q in queues or ()))


def no_worker_message(*, queue: str = GPU_QUEUE, timeout: float = 2.0) -> str:
    return (f"No Celery worker is consuming the {queue!r} queue (none answered within {timeout:g} s), so the "
            f"run would wait in the queue forever; nothing was queued. Start a worker in another terminal:\n"
            f"    {WORKER_COMMAND}\nor run the job in this process: add --in-process to this command.")
