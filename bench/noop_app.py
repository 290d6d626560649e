"""``celery -A bench.noop_app worker``: the layer's app and settings plus a no-op task.

P2's per-task floor: the same broker, serializer, ``acks_late``, ``reject_on_worker_lost``
and prefetch as ``celery -A agents_persistence.tasks worker``, with a task that ignores its
snapshot.
"""

from __future__ import annotations

from typing import Any

from agents_persistence.tasks import create_app
from agents_persistence.tasks.worker.handlers import PersistenceTask

__all__ = ["NOOP_TASK", "app"]

NOOP_TASK = "bench.noop"

app = create_app()


def _noop(self: PersistenceTask, *args: Any, **kwargs: Any) -> None:
    """Accept the message, do nothing."""


app.task(name=NOOP_TASK, base=PersistenceTask, bind=True)(_noop)
