"""Celery's prefork pool, with a pool child whose exit was handled no longer re-registered.

Celery 5.7 handles a child's exit (its sentinel readable) by closing the sentinel's
duplicate, setting ``proc._sentinel_poll = None``, and asking the pool to join the child.
The join needs the child reaped, which can lag the sentinel, and while the broker is down
the event loop (and the pool's periodic maintenance) does not run: the child can stay in
the pool's process list. The consumer's restart after the broker comes back registers every
listed child with the event loop again, hands the hub ``None`` as a file descriptor, and the
worker dies with ``Unrecoverable error: ValueError('file descriptor is None')``
(celery/celery#9250 is the same crash on another path). Our pool skips such a child: it is
gone, and the pool's maintenance (every 5 s) joins and replaces it.

The app selects this pool (``worker_pool``), so a plain ``celery worker`` or ``-P prefork``
runs it; ``-P solo``/``threads`` are unaffected.
"""

from __future__ import annotations

from typing import Any, cast

from agents_persistence.tasks.pins import missing_internals, require_internals
from celery.concurrency import asynpool, prefork

__all__ = ["CELERY_INTERNALS", "AsynPool", "TaskPool", "check_celery_internals"]

#: The Celery internals this module overrides or reads, written against Celery 5.7 (the pin
#: in pyproject.toml). A Celery that renamed one would silently bring the crash back, so
#: importing this module fails instead.
CELERY_INTERNALS: dict[type, tuple[str, ...]] = {
    asynpool.AsynPool: (
        "_track_child_process",
        "_untrack_child_process",
        "register_with_event_loop",
    ),
    prefork.TaskPool: ("Pool",),
}


def missing_celery_internals(
    required: dict[type, tuple[str, ...]] = CELERY_INTERNALS,
) -> list[str]:
    """``Class.attribute`` names of ``required`` that the installed Celery lacks."""
    return missing_internals(required)


def check_celery_internals(required: dict[type, tuple[str, ...]] = CELERY_INTERNALS) -> None:
    """Raise ImportError if the installed Celery lacks an internal this pool relies on."""
    require_internals(required, distribution="Celery", written_for="5.7", user="worker pool")


check_celery_internals()


class AsynPool(asynpool.AsynPool):
    """Celery's event-loop pool that does not track a child whose exit it already handled."""

    def _track_child_process(self, proc: Any, hub: Any) -> None:
        # None (not absent) is what _untrack_child_process leaves: the sentinel fired, the
        # child is gone and its duplicate descriptor closed.
        if getattr(proc, "_sentinel_poll", 0) is None:
            return
        cast(Any, super())._track_child_process(proc, hub)  # not in the stubs


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool running :class:`AsynPool`."""

    Pool = AsynPool
