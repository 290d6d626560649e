"""agents-persistence background layer: Celery hand-off, worker tasks, beat cleanup.

``celery -A tasks worker`` and ``celery -A tasks beat`` find :data:`app`, built from the
environment the first time it is asked for (importing this package alone reads nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.celery_app import PersistenceApp, celery_config, create_app
from tasks.client import CeleryCheckpointer, HandOff
from tasks.deadletter import DeadLetters
from tasks.messages import BadMessage
from tasks.names import CLEANUP_TASK, DELETE_TASK, SAVE_BATCH_TASK, SAVE_TASK

if TYPE_CHECKING:
    app: PersistenceApp

__all__ = [
    "CLEANUP_TASK",
    "DELETE_TASK",
    "SAVE_BATCH_TASK",
    "SAVE_TASK",
    "BadMessage",
    "CeleryCheckpointer",
    "DeadLetters",
    "HandOff",
    "PersistenceApp",
    "app",
    "celery_config",
    "create_app",
]

_app: PersistenceApp | None = None


def __getattr__(name: str) -> Any:
    global _app  # noqa: PLW0603 - the one process-wide app that `celery -A tasks` loads
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
