"""The dead-letter list: hand-offs that failed for good, kept with their reason for replay.

Entries are JSON objects, newest first, in the list ``<namespace>:deadletter`` of the
store's Redis, capped at ``dead_letter_max_length`` (the oldest fall off). Each has an
``id``, the time, the ``reason``, the ``error`` type, and what is needed to replay it: the
``task`` name with its ``args``/``kwargs``, or the raw ``body`` of an undecodable message.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import orjson
import redis
from agents_persistence.retry import RetryPolicy

__all__ = ["DeadLetters", "MemoryDeadLetters", "RedisDeadLetters", "encode_entry", "make_entry"]


def make_entry(reason: str, error: str, **fields: Any) -> dict[str, Any]:
    """A new dead-letter entry (``id`` and ``at`` filled in)."""
    return {
        "id": uuid.uuid4().hex,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason[:2000],
        "error": error,
        **fields,
    }


def encode_entry(entry: dict[str, Any]) -> bytes:
    """``entry`` as JSON bytes, whatever its arguments hold.

    A message may carry text that JSON bytes cannot (a lone surrogate, from a ``\\udXXX``
    escape): orjson refuses it, and an entry that cannot be written would send the message
    back to the queue forever. Then the arguments are kept as the ASCII-escaped JSON of the
    message, base64 (``body_base64``, like an undecodable body: shown, never replayed),
    and any other such text in the entry is backslash-escaped.
    """
    try:
        return orjson.dumps(entry)
    except orjson.JSONEncodeError:
        pass
    safe = {k: _escape(v) for k, v in entry.items() if k not in ("args", "kwargs")}
    raw = json.dumps(
        {"args": entry.get("args"), "kwargs": entry.get("kwargs")}, ensure_ascii=True, default=repr
    )
    safe["body_base64"] = base64.b64encode(raw.encode("ascii")).decode("ascii")
    safe["body_escaped"] = True
    return orjson.dumps(safe, default=repr)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escape(k): _escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    return value


class DeadLetters(ABC):
    """A bounded list of failed hand-offs."""

    @abstractmethod
    def push(self, entry: dict[str, Any]) -> None:
        """Add an entry (newest first)."""

    @abstractmethod
    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` entries, newest first."""

    @abstractmethod
    def remove(self, entry_id: str) -> dict[str, Any] | None:
        """Take the entry with ``entry_id`` out and return it (None if absent)."""

    @abstractmethod
    def count(self) -> int:
        """How many entries are kept."""

    @abstractmethod
    def purge(self) -> int:
        """Drop every entry; returns how many."""


class RedisDeadLetters(DeadLetters):
    """Dead letters in a Redis list (LPUSH + LTRIM in one transaction)."""

    def __init__(
        self, client: redis.Redis, key: str, *, max_length: int, retry: RetryPolicy
    ) -> None:
        self.client, self.key, self.max_length, self.retry = client, key, max_length, retry

    def push(self, entry: dict[str, Any]) -> None:
        raw = encode_entry(entry)

        def _push() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(self.key, raw)
            pipe.ltrim(self.key, 0, self.max_length - 1)
            pipe.execute()

        self.retry.call("dead-letter", _push)

    def _raw(self, limit: int) -> list[bytes]:
        raw = self.retry.call("dead-letter", self.client.lrange, self.key, 0, limit - 1)
        return [bytes(item) if not isinstance(item, str) else item.encode() for item in raw]

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self._raw(limit)]

    def remove(self, entry_id: str) -> dict[str, Any] | None:
        for raw in self._raw(self.max_length):
            entry: dict[str, Any] = orjson.loads(raw)
            if entry.get("id") == entry_id:
                removed = self.retry.call(
                    "dead-letter",
                    self.client.lrem,
                    self.key,
                    1,
                    raw,  # type: ignore[arg-type]
                )
                return entry if removed else None
        return None

    def count(self) -> int:
        return int(self.retry.call("dead-letter", self.client.llen, self.key))

    def purge(self) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.key)
        pipe.delete(self.key)
        n, _ = self.retry.call("dead-letter", pipe.execute)
        return int(n)


class MemoryDeadLetters(DeadLetters):
    """Dead letters in process memory (for an :class:`InMemoryCheckpointer` store)."""

    def __init__(self, *, max_length: int) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=max_length)
        self._lock = threading.Lock()

    def push(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._items.appendleft(orjson.loads(encode_entry(entry)))

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)[:limit]

    def remove(self, entry_id: str) -> dict[str, Any] | None:
        with self._lock:
            for entry in self._items:
                if entry.get("id") == entry_id:
                    self._items.remove(entry)
                    return entry
        return None

    def count(self) -> int:
        return len(self._items)

    def purge(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n
