"""``InMemoryCheckpointer``: the same semantics as Redis, in one process, for tests and demos.

States are kept encoded (the same codec and size cap as Redis) so that what a test sees is
what Redis would give back, and callers can never mutate stored state through a reference.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from agents_persistence.base import (
    DEFAULT_NAMESPACE,
    DEFAULT_TOMBSTONE_TTL,
    BaseCheckpointer,
    TTLLike,
    check_limit,
    check_page_size,
)
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteOutcome, WriteResult
from agents_persistence.codec import Codec
from agents_persistence.errors import InvalidInput
from agents_persistence.lists import MemoryList
from agents_persistence.validation import check_thread_id
from agents_persistence.versions import VersionClock

__all__ = ["InMemoryCheckpointer"]

_INF = float("inf")


@dataclass(slots=True)
class _Entry:
    version: int
    saved_at_ms: int
    body: bytes | None  # None: tombstone
    expires_at: float  # monotonic seconds; inf: never


class InMemoryCheckpointer(BaseCheckpointer):
    """A thread-safe, in-process checkpointer with the semantics of :class:`RedisCheckpointer`.

    Args:
        namespace, ttl, tombstone_ttl, codec, clock: as for :class:`RedisCheckpointer`.
        time_source: monotonic seconds (inject a fake clock to test expiry without sleeping).
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        clock: VersionClock | None = None,
        time_source: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            namespace=namespace, ttl=ttl, tombstone_ttl=tombstone_ttl, codec=codec, clock=clock
        )
        self._now = time_source
        self._lock = threading.Lock()
        self._records: dict[str, _Entry] = {}
        self._index: dict[str, float] = {}  # thread id -> expiry, like the Redis sorted set
        self._dead_letters: MemoryList | None = None
        self._foreign: dict[str, MemoryList] = {}

    def __repr__(self) -> str:
        return (
            f"InMemoryCheckpointer(namespace={self.namespace!r}, threads={len(self._index)}, "
            f"ttl={self.ttl!r})"
        )

    def _live(self, thread_id: str, now: float) -> _Entry | None:
        entry = self._records.get(thread_id)
        if entry is not None and entry.expires_at <= now:
            del self._records[thread_id]
            return None
        return entry

    # -- writes ---------------------------------------------------------------------------------
    def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        results: list[WriteResult | Exception] = []
        with self._lock:
            now = self._now()
            for s in saves:
                try:
                    self.codec.check_header(s.version, s.saved_at_ms)
                except InvalidInput as exc:
                    results.append(exc)
                    continue
                entry = self._live(s.thread_id, now)
                current = entry.version if entry is not None else 0
                if s.version <= current:
                    outcome = (
                        WriteOutcome.DUPLICATE if s.version == current else WriteOutcome.STALE
                    )
                    results.append(WriteResult(s.thread_id, s.version, outcome, current))
                    continue
                expires = _INF if self.ttl_ms is None else now + self.ttl_ms / 1000
                self._records[s.thread_id] = _Entry(s.version, s.saved_at_ms, s.body, expires)
                self._index[s.thread_id] = expires
                results.append(
                    WriteResult(s.thread_id, s.version, WriteOutcome.WRITTEN, s.version)
                )
        return results

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        check_thread_id(thread_id)
        explicit = self._delete_version(version)
        clock = self._next_version()
        with self._lock:
            now = self._now()
            entry = self._live(thread_id, now)
            current = entry.version if entry is not None else 0
            if explicit is None:
                target = max(clock, current)
            elif explicit < current:
                return WriteResult(thread_id, explicit, WriteOutcome.STALE, current)
            else:
                target = explicit
            if entry is not None and entry.body is None and target == current:
                return WriteResult(thread_id, target, WriteOutcome.DUPLICATE, current)
            self._records[thread_id] = _Entry(
                target, time.time_ns() // 1_000_000, None, now + self.tombstone_ttl_ms / 1000
            )
            self._index.pop(thread_id, None)
            return WriteResult(thread_id, target, WriteOutcome.WRITTEN, target)

    def cleanup_expired(self, limit: int | None = None) -> int:
        check_limit(limit)
        with self._lock:
            now = self._now()
            expired = [tid for tid, exp in self._index.items() if exp <= now]
            expired.sort(key=lambda tid: (self._index[tid], tid))
            if limit is not None:
                expired = expired[:limit]
            for tid in expired:
                del self._index[tid]
                self._live(tid, now)
            return len(expired)

    # -- reads ----------------------------------------------------------------------------------
    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        check_thread_id(thread_id)
        with self._lock:
            entry = self._live(thread_id, self._now())
            if entry is None or entry.body is None:
                return None
            version, saved_ms, body = entry.version, entry.saved_at_ms, entry.body
        record = self.codec.unpack(thread_id, self.codec.pack(body, version, saved_ms))
        assert record.state is not None
        return Checkpoint(thread_id, record.version, record.saved_at, record.state)

    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        check_page_size(page_size)
        cursor: tuple[float, str] | None = None
        while True:
            with self._lock:
                now = self._now()
                live = sorted((exp, tid) for tid, exp in self._index.items() if exp > now)
            start = 0 if cursor is None else bisect.bisect_right(live, cursor)
            page = live[start : start + page_size]
            for _, tid in page:
                yield tid
            if len(page) < page_size:
                return
            cursor = page[-1]

    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        with self._lock:
            now = self._now()
            held = {tid: self._live(tid, now) for tid in thread_ids}
        return {tid: 0 if e is None else e.version for tid, e in held.items()}

    def count_threads(self) -> tuple[int, int]:
        with self._lock:
            now = self._now()
            expired = sum(1 for exp in self._index.values() if exp <= now)
            return len(self._index) - expired, expired

    # -- what tools need ------------------------------------------------------------------------
    def dead_letter_list(self, max_length: int, *, namespace: str | None = None) -> MemoryList:
        if namespace is not None and namespace != self.namespace:
            # Another namespace's list: another InMemoryCheckpointer holds it, out of reach;
            # kept here apart from this namespace's own (never mixed into it).
            with self._lock:
                found = self._foreign.get(namespace)
                if found is None or found.max_length != max_length:
                    found = self._foreign[namespace] = MemoryList(max_length)
                return found
        with self._lock:
            if self._dead_letters is None or self._dead_letters.max_length != max_length:
                kept = self._dead_letters.newest(max_length) if self._dead_letters else []
                self._dead_letters = MemoryList(max_length)
                for entry in reversed(kept):
                    self._dead_letters.push(entry)
            return self._dead_letters

    def key_count(self) -> int:
        with self._lock:
            now = self._now()
            records = sum(1 for tid in list(self._records) if self._live(tid, now) is not None)
            lists = 1 if self._dead_letters is not None and self._dead_letters.count() else 0
            return records + (1 if self._index else 0) + lists

    def server_info(self) -> dict[str, object]:
        return {}

    def ping(self) -> None:
        return None

    def purge_threads(self, thread_ids: Sequence[str]) -> int:
        with self._lock:
            for tid in thread_ids:
                self._index.pop(tid, None)
            return sum(1 for tid in thread_ids if self._records.pop(tid, None) is not None)

    def drop_namespace(self) -> int:
        dropped = self.key_count()
        with self._lock:
            self._records.clear()
            self._index.clear()
            if self._dead_letters is not None:
                self._dead_letters.clear()
        return dropped
