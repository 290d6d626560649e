"""What every checkpointer shares: input checks, versioning, encoding, TTL arithmetic."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import timedelta

from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteResult
from agents_persistence.codec import Codec
from agents_persistence.errors import InvalidInput
from agents_persistence.keys import Keys
from agents_persistence.lists import BoundedList
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.validation import (
    MAX_TTL_SECONDS,
    check_thread_id,
    check_version,
    coerce_snapshot,
)
from agents_persistence.versions import VersionClock, next_version

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_TOMBSTONE_TTL",
    "MAX_PAGE_SIZE",
    "BaseCheckpointer",
    "CheckpointerCore",
    "TTLLike",
    "to_milliseconds",
]

TTLLike = timedelta | float | int | None
#: How long a tombstone keeps older saves out unless told otherwise: a day covers any
#: sane visibility timeout plus retry span.
DEFAULT_TOMBSTONE_TTL = timedelta(days=1)
#: The namespace of a store built without one (``Settings.namespace``'s default too).
DEFAULT_NAMESPACE = "agents"
#: Largest page of a listing (and batch of a cleanup): one Redis command each, and a
#: 100,000-entry page held Redis for tens of ms (measured: docs/bad-input.md, class 8).
MAX_PAGE_SIZE = 10_000


def to_milliseconds(value: TTLLike, what: str) -> int | None:
    """A TTL given as ``timedelta`` or seconds, in whole milliseconds (1 ms .. 100 years,
    :data:`~agents_persistence.validation.MAX_TTL_SECONDS`)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a timedelta or seconds, not a bool")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    if seconds > MAX_TTL_SECONDS:
        raise ValueError(f"{what} must be at most {MAX_TTL_SECONDS} s (100 years), got {value!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"{what} must be at least 1 ms, got {value!r}")
    return ms


class CheckpointerCore:
    """What every checkpointer shares, blocking or async: the namespace, TTLs, codec and
    version clock, and :meth:`prepare` (validate, version, encode)."""

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        clock: VersionClock | None = None,
    ) -> None:
        self._namespace = Keys(namespace).namespace  # Keys validates it
        self.ttl_ms = to_milliseconds(ttl, "ttl")
        tomb = to_milliseconds(tombstone_ttl, "tombstone_ttl")
        if tomb is None:
            raise ValueError("tombstone_ttl must be set: tombstones must not live forever")
        self.tombstone_ttl_ms = tomb
        self.codec = codec if codec is not None else Codec()
        self._next_version = clock.next if clock is not None else next_version

    @property
    def namespace(self) -> str:
        """The namespace of everything this store keeps (first segment of its Redis keys)."""
        return self._namespace

    @property
    def ttl(self) -> timedelta | None:
        """Lifetime of a thread's state after its last save, or None."""
        return None if self.ttl_ms is None else timedelta(milliseconds=self.ttl_ms)

    def prepare(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> PreparedSave:
        """Validate, version and encode a save without writing it.

        Raises:
            InvalidThreadId, InvalidVersion, InvalidSnapshot, SnapshotTooLarge.
        """
        check_thread_id(thread_id)
        version = self._next_version() if version is None else check_version(version)
        body = self.codec.dump_json(coerce_snapshot(state))
        return PreparedSave(thread_id, version, body, time.time_ns() // 1_000_000)

    def _delete_version(self, version: int | None) -> int | None:
        return None if version is None else check_version(version)

    @staticmethod
    def _only(results: Sequence[WriteResult | Exception]) -> WriteResult:
        """The result of a one-save batch (its error raised)."""
        (result,) = results
        if isinstance(result, Exception):
            raise result
        return result


class BaseCheckpointer(CheckpointerCore, ABC):
    """Shared behaviour of :class:`RedisCheckpointer` and :class:`InMemoryCheckpointer`.

    Besides the contract, a store offers what tools around it need, so none of them reaches
    into a particular implementation: its :attr:`namespace`, :meth:`dead_letter_list`,
    :meth:`key_count`, :meth:`server_info`, :meth:`ping`, :meth:`purge_threads` and
    :meth:`drop_namespace`.
    """

    # -- the contract ---------------------------------------------------------------------
    def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> WriteResult:
        """Store ``state`` at ``version`` (from the process clock if None) if it is newer.

        Returns:
            A :class:`WriteResult`: written, or duplicate / stale (not errors).
        Raises:
            InvalidInput: bad thread id, version or snapshot (nothing written).
            StoreUnavailable: the store stayed unreachable through the retry policy.
            CorruptState: the thread's key holds something that is not ours.
        """
        return self.save_prepared(self.prepare(thread_id, state, version=version))

    def save_prepared(self, save: PreparedSave) -> WriteResult:
        """Apply one prepared save (see :meth:`save_many`)."""
        return self._only(self.save_many([save]))

    @abstractmethod
    def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        """Apply many prepared saves in one round trip, each with its own compare-and-set.

        Returns one entry per save, in order: its result, or the typed error that concerned
        only that save (e.g. :class:`CorruptState`). Store-wide failures raise.
        """

    def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        """The newest stored state of ``thread_id``, or None (never saved, deleted, expired).

        Raises:
            InvalidThreadId, CorruptState (for this thread only), StoreUnavailable.
        """
        checkpoint = self.load_checkpoint(thread_id)
        return None if checkpoint is None else checkpoint.state

    @abstractmethod
    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        """The newest stored state with its version and save time, or None."""

    @abstractmethod
    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        """Delete a thread, leaving a tombstone so older saves cannot bring it back.

        Args:
            version: the delete's version; None means "newer than anything stored and than
                every version this process handed out". With an explicit version older than
                the stored state, nothing is deleted (outcome ``stale``).
        """

    def list_threads(self) -> list[str]:
        """Every thread with live state (expired ones excluded even before cleanup)."""
        return list(dict.fromkeys(self.iter_threads()))

    @abstractmethod
    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        """Live thread ids a page at a time, ordered by expiry then id (bounded memory).

        Every thread live for the whole iteration is yielded at least once; one saved again
        meanwhile may be yielded twice (its expiry moved past the cursor).
        """

    @abstractmethod
    def cleanup_expired(self, limit: int | None = None) -> int:
        """Drop expired threads from the index; returns how many. Idempotent."""

    @abstractmethod
    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        """The version held for each thread (state or tombstone; 0: nothing), one round trip.

        Used to tell whether handed-off saves are durable: held >= handed off.
        """

    @abstractmethod
    def count_threads(self) -> tuple[int, int]:
        """(live, expired but not yet cleaned) entries of the index."""

    # -- what tools need: dead letters, counts, the server, clean-up -----------------------
    @abstractmethod
    def dead_letter_list(self, max_length: int, *, namespace: str | None = None) -> BoundedList:
        """The namespace's list of dead-lettered hand-offs (entries are opaque bytes), capped
        at ``max_length`` entries. Every call returns a view of the same list.

        ``namespace``: another namespace's list on the same store, for a hand-off that
        names that namespace but reached this one's worker (a queue shared by operators);
        it is recorded where its own namespace's operators look.
        """

    @abstractmethod
    def key_count(self) -> int:
        """How many keys the namespace holds (records, tombstones, index, lists)."""

    @abstractmethod
    def server_info(self) -> dict[str, object]:
        """What the server says about itself (Redis ``INFO``); empty if it says nothing."""

    @abstractmethod
    def ping(self) -> None:
        """Return once the store answers (through the retry policy).

        Raises:
            StoreUnavailable: it did not answer within the retry policy's bounds.
        """

    @abstractmethod
    def purge_threads(self, thread_ids: Sequence[str]) -> int:
        """Remove these threads outright (records, tombstones, index entries), leaving no
        tombstone: for clean-up of scratch data, not a delete. Returns how many records
        were removed."""

    @abstractmethod
    def drop_namespace(self) -> int:
        """Remove everything the namespace holds; returns how many keys (entries) went.
        Nothing outside the namespace is touched."""


def check_page_size(page_size: int) -> int:
    """Return ``page_size`` if it is an int in ``1 .. MAX_PAGE_SIZE``, else raise
    :class:`InvalidInput` (a ``ValueError``)."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise InvalidInput(f"page_size must be an int, got {type(page_size).__name__}")
    if not 0 < page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size must be an int in 1..{MAX_PAGE_SIZE}, got {page_size!r}")
    return page_size


def check_limit(limit: int | None) -> int | None:
    """Return ``limit`` if it is None or a positive int, else raise :class:`InvalidInput`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"limit must be a positive int or None, got {limit!r}")
    return limit
