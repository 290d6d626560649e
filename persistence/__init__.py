"""agents-persistence core: versioned, retrying agent-state checkpointers.

Use :class:`RedisCheckpointer` in production (:class:`AsyncRedisCheckpointer` on asyncio)
and :class:`InMemoryCheckpointer` in tests; all keep the :class:`Checkpointer` contract with
the same semantics.

The names below load on first use (PEP 562), so importing a submodule or the pytest plugin
does not pull in redis-py or pydantic before they are needed.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from agents_persistence.async_store import AsyncRedisCheckpointer
    from agents_persistence.base import BaseCheckpointer
    from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteOutcome, WriteResult
    from agents_persistence.codec import Codec
    from agents_persistence.errors import (
        BrokerMisconfigured,
        CorruptState,
        FlushTimeout,
        HandOffError,
        InvalidInput,
        InvalidSnapshot,
        InvalidThreadId,
        InvalidVersion,
        LegacyLayout,
        PersistenceError,
        ReplicaAcksMissing,
        SnapshotTooLarge,
        StoreFull,
        StoreMisconfigured,
        StoreUnavailable,
    )
    from agents_persistence.memory import InMemoryCheckpointer
    from agents_persistence.migrate import MigrationReport, migrate_namespace
    from agents_persistence.models import (
        AgentInterrupt,
        AgentStateSnapshot,
        HitlInterrupt,
        TodoItem,
        TodoStatus,
    )
    from agents_persistence.protocol import Checkpointer, SaveReceipt
    from agents_persistence.redis_store import RedisCheckpointer
    from agents_persistence.retry import RetryPolicy
    from agents_persistence.versions import VersionClock, next_version

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AgentInterrupt": "models",
    "AgentStateSnapshot": "models",
    "AsyncRedisCheckpointer": "async_store",
    "BaseCheckpointer": "base",
    "BrokerMisconfigured": "errors",
    "Checkpoint": "checkpoint",
    "Checkpointer": "protocol",
    "Codec": "codec",
    "CorruptState": "errors",
    "FlushTimeout": "errors",
    "HandOffError": "errors",
    "HitlInterrupt": "models",
    "InMemoryCheckpointer": "memory",
    "InvalidInput": "errors",
    "InvalidSnapshot": "errors",
    "InvalidThreadId": "errors",
    "InvalidVersion": "errors",
    "PersistenceError": "errors",
    "PreparedSave": "checkpoint",
    "RedisCheckpointer": "redis_store",
    "RetryPolicy": "retry",
    "SaveReceipt": "protocol",
    "SnapshotTooLarge": "errors",
    "StoreFull": "errors",
    "StoreMisconfigured": "errors",
    "LegacyLayout": "errors",
    "MigrationReport": "migrate",
    "ReplicaAcksMissing": "errors",
    "StoreUnavailable": "errors",
    "TodoItem": "models",
    "TodoStatus": "models",
    "VersionClock": "versions",
    "WriteOutcome": "checkpoint",
    "WriteResult": "checkpoint",
    "migrate_namespace": "migrate",
    "next_version": "versions",
}

__all__ = [
    "AgentInterrupt",
    "AgentStateSnapshot",
    "AsyncRedisCheckpointer",
    "BaseCheckpointer",
    "BrokerMisconfigured",
    "Checkpoint",
    "Checkpointer",
    "Codec",
    "CorruptState",
    "FlushTimeout",
    "HandOffError",
    "HitlInterrupt",
    "InMemoryCheckpointer",
    "InvalidInput",
    "InvalidSnapshot",
    "InvalidThreadId",
    "InvalidVersion",
    "LegacyLayout",
    "MigrationReport",
    "PersistenceError",
    "PreparedSave",
    "RedisCheckpointer",
    "ReplicaAcksMissing",
    "RetryPolicy",
    "SaveReceipt",
    "SnapshotTooLarge",
    "StoreFull",
    "StoreMisconfigured",
    "StoreUnavailable",
    "TodoItem",
    "TodoStatus",
    "VersionClock",
    "WriteOutcome",
    "WriteResult",
    "migrate_namespace",
    "next_version",
]


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
