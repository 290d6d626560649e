"""The contract every checkpointer keeps (the seed's ``Checkpointer`` trait)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agents_persistence.checkpoint import WriteResult
from agents_persistence.models import AgentStateSnapshot

__all__ = ["Checkpointer", "SaveReceipt"]


class SaveReceipt(Protocol):
    """What ``save_state`` returns: at least the thread and the version it carried."""

    @property
    def thread_id(self) -> str: ...

    @property
    def version(self) -> int: ...


@runtime_checkable
class Checkpointer(Protocol):
    """Save, load, delete and list agent state by thread id.

    Every implementation applies a save only if its version is greater than what it holds
    for the thread (state or tombstone); an equal version is a duplicate and a lower one is
    stale, and neither is an error. A delete leaves a tombstone at its version.
    """

    def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> SaveReceipt:
        """Store ``state`` for ``thread_id`` at ``version`` (assigned if None)."""
        ...

    def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        """The newest stored state of ``thread_id``, or None."""
        ...

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        """Delete ``thread_id``; saves with an older version can no longer bring it back."""
        ...

    def list_threads(self) -> list[str]:
        """Every thread id with live (unexpired, undeleted) state."""
        ...
