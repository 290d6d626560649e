"""agents-persistence background layer: Celery hand-off, worker tasks, beat cleanup.

``celery -A agents_persistence.tasks worker`` and ``celery -A agents_persistence.tasks beat``
find :data:`app`, built from the environment the first time it is asked for. The names below
load on first use (PEP 562): importing this package, or its pytest plugin, imports neither
Celery nor kombu nor redis-py.

The sub-packages, by role:

``worker``
    the Celery app and its options, the task bodies, the consumer, the dead-letter list.
``client``
    the agent side: :class:`CeleryCheckpointer` (and :class:`AsyncCeleryCheckpointer` on
    asyncio), its buffer and its message sender.
``protocol``
    what crosses the broker: task names, message building and parsing, the JSON decoder.
``broker``
    the Redis transport that keeps a message safe between its pop and its unacked record.
``cli``
    the ``agents-persistence`` command and its demo.
``devtools``
    starting a private redis-server and Celery workers (the demo, the tests and bench/).
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from agents_persistence.tasks.client.async_checkpointer import (
        AsyncCeleryCheckpointer,
        AsyncHandOff,
    )
    from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer, HandOff
    from agents_persistence.tasks.protocol.messages import BadMessage
    from agents_persistence.tasks.protocol.names import (
        CLEANUP_TASK,
        DELETE_TASK,
        SAVE_BATCH_TASK,
        SAVE_TASK,
    )
    from agents_persistence.tasks.worker.app import PersistenceApp, celery_config, create_app
    from agents_persistence.tasks.worker.dead_letters import DeadLetters

    app: PersistenceApp

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AsyncCeleryCheckpointer": "client.async_checkpointer",
    "AsyncHandOff": "client.async_checkpointer",
    "BadMessage": "protocol.messages",
    "CLEANUP_TASK": "protocol.names",
    "CeleryCheckpointer": "client.checkpointer",
    "DELETE_TASK": "protocol.names",
    "DeadLetters": "worker.dead_letters",
    "HandOff": "client.checkpointer",
    "PersistenceApp": "worker.app",
    "SAVE_BATCH_TASK": "protocol.names",
    "SAVE_TASK": "protocol.names",
    "celery_config": "worker.app",
    "create_app": "worker.app",
}

__all__ = [
    "CLEANUP_TASK",
    "DELETE_TASK",
    "SAVE_BATCH_TASK",
    "SAVE_TASK",
    "AsyncCeleryCheckpointer",
    "AsyncHandOff",
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


def __getattr__(name: str) -> _typing.Any:
    global _app  # noqa: PLW0603 - the one process-wide app that `celery -A` loads
    if name == "app":
        if _app is None:
            from agents_persistence.tasks.worker.app import create_app

            _app = create_app()
        return _app
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
