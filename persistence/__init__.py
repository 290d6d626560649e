"""agents-persistence core: versioned, retrying agent-state checkpointers.

Use :class:`RedisCheckpointer` in production and :class:`InMemoryCheckpointer` in tests;
both keep the :class:`Checkpointer` contract with the same semantics.
"""

from persistence.base import BaseCheckpointer
from persistence.checkpoint import Checkpoint, PreparedSave, WriteOutcome, WriteResult
from persistence.codec import Codec
from persistence.errors import (
    CorruptState,
    FlushTimeout,
    HandOffError,
    InvalidInput,
    InvalidSnapshot,
    InvalidThreadId,
    InvalidVersion,
    PersistenceError,
    SnapshotTooLarge,
    StoreUnavailable,
)
from persistence.memory import InMemoryCheckpointer
from persistence.models import (
    AgentInterrupt,
    AgentStateSnapshot,
    HitlInterrupt,
    TodoItem,
    TodoStatus,
)
from persistence.protocol import Checkpointer, SaveReceipt
from persistence.redis_store import RedisCheckpointer
from persistence.retry import RetryPolicy
from persistence.versions import VersionClock, next_version

__all__ = [
    "AgentInterrupt",
    "AgentStateSnapshot",
    "BaseCheckpointer",
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
    "PersistenceError",
    "PreparedSave",
    "RedisCheckpointer",
    "RetryPolicy",
    "SaveReceipt",
    "SnapshotTooLarge",
    "StoreUnavailable",
    "TodoItem",
    "TodoStatus",
    "VersionClock",
    "WriteOutcome",
    "WriteResult",
    "next_version",
]
