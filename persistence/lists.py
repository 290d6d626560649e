"""A bounded list of byte entries, newest first, kept by the store (in Redis or in memory).

The core knows nothing of what the entries mean: the Celery layer keeps its dead letters in
one (:meth:`BaseCheckpointer.dead_letter_list`), JSON-encoded. In Redis it is one list key,
written with ``LPUSH`` + ``LTRIM`` in one transaction, every call through the store's retry
policy. Readers page through it (:meth:`BoundedList.page`), never all of it at once. A list
key that holds another Redis type raises :class:`StoreMisconfigured` (an operator's fix, not
an outage to wait out).
"""

from __future__ import annotations

import itertools
import threading
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import redis
import redis.exceptions as rex
from agents_persistence.errors import StoreMisconfigured
from agents_persistence.retry import RetryPolicy

__all__ = ["BoundedList", "MemoryList", "RedisList"]


class BoundedList(ABC):
    """Byte entries, newest first; beyond ``max_length`` the oldest fall off."""

    def __init__(self, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        self.max_length = max_length

    @abstractmethod
    def push(self, entry: bytes) -> None:
        """Add ``entry`` as the newest (dropping the oldest beyond ``max_length``)."""

    def newest(self, limit: int) -> list[bytes]:
        """Up to ``limit`` entries, newest first."""
        return self.page(0, limit)

    @abstractmethod
    def page(self, start: int, count: int) -> list[bytes]:
        """Up to ``count`` entries from position ``start`` (0: the newest), newest first."""

    @abstractmethod
    def remove(self, entry: bytes) -> bool:
        """Take out one entry equal to ``entry``; False if there is none."""

    @abstractmethod
    def count(self) -> int:
        """How many entries are kept."""

    @abstractmethod
    def clear(self) -> int:
        """Drop every entry; returns how many there were."""


class RedisList(BoundedList):
    """A :class:`BoundedList` in the Redis list ``key``; ``name`` labels its calls in the
    retry policy's log lines."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        max_length: int,
        retry: RetryPolicy,
        name: str = "list",
    ) -> None:
        super().__init__(max_length)
        self.client, self.key, self.retry, self.name = client, key, retry, name

    def push(self, entry: bytes) -> None:
        def _push() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(self.key, entry)
            pipe.ltrim(self.key, 0, self.max_length - 1)
            pipe.execute()

        self._call(_push)

    def page(self, start: int, count: int) -> list[bytes]:
        if count < 1:
            return []
        raw = self._call(self.client.lrange, self.key, start, start + count - 1)
        return [_as_bytes(item) for item in raw]

    def remove(self, entry: bytes) -> bool:
        return bool(self._call(self.client.lrem, self.key, 1, entry))

    def count(self) -> int:
        return int(self._call(self.client.llen, self.key))

    def clear(self) -> int:
        def _clear() -> Any:
            pipe = self.client.pipeline(transaction=True)
            pipe.llen(self.key)
            pipe.delete(self.key)
            return pipe.execute()

        n, _ = self._call(_clear)
        return int(n)

    def _call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` through the retry policy; WRONGTYPE is StoreMisconfigured."""
        try:
            return self.retry.call(self.name, fn, *args)
        except rex.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise StoreMisconfigured(
                    self.key, "the list key holds a value of another Redis type (WRONGTYPE)"
                ) from exc
            raise


class MemoryList(BoundedList):
    """A :class:`BoundedList` in process memory (thread-safe)."""

    def __init__(self, max_length: int) -> None:
        super().__init__(max_length)
        self._items: deque[bytes] = deque(maxlen=max_length)
        self._lock = threading.Lock()

    def push(self, entry: bytes) -> None:
        with self._lock:
            self._items.appendleft(bytes(entry))

    def page(self, start: int, count: int) -> list[bytes]:
        with self._lock:
            return list(itertools.islice(self._items, start, start + max(count, 0)))

    def remove(self, entry: bytes) -> bool:
        with self._lock:
            try:
                self._items.remove(entry)
            except ValueError:
                return False
            return True

    def count(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n


def _as_bytes(item: Any) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)
