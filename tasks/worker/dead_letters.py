"""The dead-letter list: hand-offs that failed for good, kept with their reason for replay.

Entries are JSON objects, newest first, in the list ``<namespace>:deadletter`` of the
store's Redis, capped at ``dead_letter_max_length`` (the oldest fall off). Each has an
``id``, the time, the ``reason``, the ``error`` type, and what is needed to replay it: the
``task`` name with its ``args``/``kwargs``, or the raw ``body`` of an undecodable message.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import orjson
import redis
from agents_persistence.lists import BoundedList, MemoryList, RedisList
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


class DeadLetters:
    """A bounded list of failed hand-offs: JSON entries over the store's
    :meth:`~agents_persistence.base.BaseCheckpointer.dead_letter_list`."""

    def __init__(self, entries: BoundedList) -> None:
        self.entries = entries

    @property
    def max_length(self) -> int:
        """How many entries are kept at most (the oldest fall off)."""
        return self.entries.max_length

    def push(self, entry: dict[str, Any]) -> None:
        """Add an entry (newest first)."""
        self.entries.push(encode_entry(entry))

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` entries, newest first."""
        return [orjson.loads(raw) for raw in self.entries.newest(limit)]

    def remove(self, entry_id: str) -> dict[str, Any] | None:
        """Take the entry with ``entry_id`` out and return it (None if absent)."""
        for raw in self.entries.newest(self.entries.max_length):
            entry: dict[str, Any] = orjson.loads(raw)
            if entry.get("id") == entry_id:
                return entry if self.entries.remove(raw) else None
        return None

    def count(self) -> int:
        """How many entries are kept."""
        return self.entries.count()

    def purge(self) -> int:
        """Drop every entry; returns how many."""
        return self.entries.clear()


class RedisDeadLetters(DeadLetters):
    """Dead letters in the Redis list ``key`` (LPUSH + LTRIM in one transaction)."""

    def __init__(
        self, client: redis.Redis, key: str, *, max_length: int, retry: RetryPolicy
    ) -> None:
        super().__init__(
            RedisList(client, key, max_length=max_length, retry=retry, name="dead-letter")
        )


class MemoryDeadLetters(DeadLetters):
    """Dead letters in process memory."""

    def __init__(self, *, max_length: int) -> None:
        super().__init__(MemoryList(max_length))
