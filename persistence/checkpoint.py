"""Value types returned by checkpointers."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from agents_persistence.models import AgentStateSnapshot

__all__ = ["Checkpoint", "PreparedSave", "WriteOutcome", "WriteResult"]


class WriteOutcome(enum.Enum):
    """What a versioned write did."""

    WRITTEN = "written"  #: applied: the version was newer than what the store held
    DUPLICATE = "duplicate"  #: the store already held this very version (a retry, a redelivery)
    STALE = "stale"  #: the store held a newer version or tombstone; nothing changed


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Result of a save or delete.

    Attributes:
        thread_id: the thread written.
        version: the version this call carried.
        outcome: written, duplicate or stale. Neither of the last two is an error.
        current_version: the version the store holds for the thread afterwards.
    """

    thread_id: str
    version: int
    outcome: WriteOutcome
    current_version: int

    @property
    def written(self) -> bool:
        """True if this call changed the store."""
        return self.outcome is WriteOutcome.WRITTEN

    @property
    def stale(self) -> bool:
        """True if a newer version was already stored."""
        return self.outcome is WriteOutcome.STALE

    @property
    def duplicate(self) -> bool:
        """True if this exact version was already stored."""
        return self.outcome is WriteOutcome.DUPLICATE


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stored state with its metadata.

    Attributes:
        thread_id: the thread.
        version: the version that wrote it (0 for plain JSON written by the Rust crate).
        saved_at: when the writer encoded it (UTC), or None for Rust-written JSON.
        state: the snapshot.
    """

    thread_id: str
    version: int
    saved_at: datetime | None
    state: AgentStateSnapshot


@dataclass(frozen=True, slots=True)
class PreparedSave:
    """A validated, versioned, encoded save, ready for any checkpointer or a message.

    Build it with ``checkpointer.prepare(...)``; ``body`` is the snapshot's JSON.
    """

    thread_id: str
    version: int
    body: bytes
    saved_at_ms: int
