"""The dead-letter list: hand-offs that failed for good, kept with their reason for replay.

Entries are JSON objects, newest first, in the list ``<namespace>:deadletter`` of the
store's Redis, capped at ``dead_letter_max_length`` (the oldest fall off). Each has an
``id``, the time, the ``reason``, the ``error`` type, and what is needed to replay it: the
``task`` name with its ``args``/``kwargs``, or the raw ``body`` of an undecodable message.

Every entry is bounded. One that records refused input (a malformed message, an invalid
snapshot: anyone can send those, of any size) keeps at most :data:`EXCERPT_BYTES`; one
that records a valid hand-off the store failed (retries exhausted, a thread key of
another type, an unexpected error) keeps its arguments whole up to
:data:`REPLAYABLE_BYTES`, because replaying it is how that save is recovered. Beyond its
bound an entry keeps an ``excerpt`` of its JSON with the ``original_bytes`` and their
``sha256``, marked ``truncated`` (shown, never replayed).

Readers page through the list (:meth:`DeadLetters.entries`), never holding all of it, and
an entry that is not a JSON object (written by hand, damaged) is shown escaped as
``malformed``, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import orjson
import redis
from agents_persistence.lists import BoundedList, MemoryList, RedisList
from agents_persistence.retry import RetryPolicy

__all__ = [
    "EXCERPT_BYTES",
    "REPLAYABLE_BYTES",
    "DeadLetters",
    "MemoryDeadLetters",
    "RedisDeadLetters",
    "decode_entry",
    "encode_entry",
    "make_entry",
]

#: Largest entry recording refused input: enough to see what was sent.
EXCERPT_BYTES: Final = 64 * 1024
#: Largest entry recording a valid hand-off the store failed: four default-sized (16 MiB)
#: snapshots, JSON-escaped inside the entry.
REPLAYABLE_BYTES: Final = 64 * 1024 * 1024
#: Errors that say the store failed a valid hand-off (so its entry must stay replayable).
_STORE_FAILURES: Final = frozenset(
    {"CorruptState", "StoreUnavailable", "StoreFull", "StoreMisconfigured"}
)
#: Fields holding what was sent; an over-size entry keeps an excerpt instead.
_PAYLOAD: Final = ("args", "kwargs", "body", "body_base64")
#: Longest other string field kept in an over-size entry (task ids, task names...).
_FIELD_CHARS: Final = 1000
#: Entries read from the list per round trip.
_PAGE: Final = 100


def make_entry(reason: str, error: str, **fields: Any) -> dict[str, Any]:
    """A new dead-letter entry (``id`` and ``at`` filled in)."""
    return {
        "id": uuid.uuid4().hex,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason[:2000],
        "error": error,
        **fields,
    }


def entry_limit(entry: dict[str, Any]) -> int:
    """The bound of ``entry``: :data:`REPLAYABLE_BYTES` if it records a valid hand-off the
    store failed, else :data:`EXCERPT_BYTES`."""
    store_failed = (
        entry.get("exhausted") is True
        or entry.get("unexpected") is True
        or entry.get("error") in _STORE_FAILURES
    )
    return REPLAYABLE_BYTES if store_failed else EXCERPT_BYTES


def encode_entry(entry: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """``entry`` as JSON bytes of at most ``max_bytes`` (default: :func:`entry_limit`),
    whatever its arguments hold.

    A message may carry text that JSON bytes cannot (a lone surrogate, from a ``\\udXXX``
    escape): orjson refuses it, and an entry that cannot be written would send the message
    back to the queue forever. Then the arguments are kept as the ASCII-escaped JSON of the
    message, base64 (``body_base64``, like an undecodable body: shown, never replayed),
    and any other such text in the entry is backslash-escaped. Beyond ``max_bytes`` the
    payload is replaced by an excerpt (see the module docstring).
    """
    limit = entry_limit(entry) if max_bytes is None else max_bytes
    raw = _encode(entry)
    if len(raw) <= limit:
        return raw
    return _excerpt(entry, raw, limit)


def _encode(entry: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(entry)
    except (orjson.JSONEncodeError, TypeError):
        pass
    safe = {k: _escape(v) for k, v in entry.items() if k not in ("args", "kwargs")}
    raw = json.dumps(
        {"args": entry.get("args"), "kwargs": entry.get("kwargs")}, ensure_ascii=True, default=repr
    )
    safe["body_base64"] = base64.b64encode(raw.encode("ascii")).decode("ascii")
    safe["body_escaped"] = True
    return orjson.dumps(safe, default=repr)


def _excerpt(entry: dict[str, Any], raw: bytes, limit: int) -> bytes:
    """``entry`` without its payload: the first bytes of its JSON, its size and digest."""
    kept = {
        k: _escape(v)[:_FIELD_CHARS] if isinstance(v, str) else v
        for k, v in entry.items()
        if k not in _PAYLOAD and isinstance(v, (str, int, float, bool, type(None)))
    }
    kept.update(truncated=True, original_bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    # JSON-escaping the excerpt at most doubles it (a quote or backslash takes two bytes).
    budget = max(0, (limit - len(orjson.dumps(kept)) - 64) // 2)
    kept["excerpt"] = raw[:budget].decode("utf-8", "ignore")
    return orjson.dumps(kept)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escape(k): _escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    return value


def decode_entry(raw: bytes) -> dict[str, Any]:
    """An entry as stored; one that is not a JSON object comes back as
    ``{"id": None, "malformed": True, "raw": <its first 200 bytes, escaped>}``."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        entry = None
    if isinstance(entry, dict):
        return entry
    return {"id": None, "malformed": True, "error": "malformed entry", "raw": repr(raw[:200])}


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
        """Add an entry (newest first), bounded by :func:`entry_limit`."""
        self.entries.push(encode_entry(entry))

    def raw_entries(self, limit: int | None = None) -> Iterator[bytes]:
        """Up to ``limit`` (default: all) stored entries, newest first, a page at a time."""
        start = 0
        while limit is None or start < limit:
            count = _PAGE if limit is None else min(_PAGE, limit - start)
            page = self.entries.page(start, count)
            yield from page
            if len(page) < count:
                return
            start += count

    def iter_entries(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` entries (default: all), newest first, decoded (malformed ones
        as :func:`decode_entry` shows them), a page at a time."""
        return map(decode_entry, self.raw_entries(limit))

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` entries, newest first."""
        return list(self.iter_entries(limit))

    def find(self, entry_id: str) -> tuple[bytes, dict[str, Any]] | None:
        """The stored bytes and the entry with ``entry_id`` (None if absent), paging."""
        for raw in self.raw_entries():
            entry = decode_entry(raw)
            if entry.get("id") == entry_id:
                return raw, entry
        return None

    def remove(self, entry_id: str) -> dict[str, Any] | None:
        """Take the entry with ``entry_id`` out and return it (None if absent)."""
        found = self.find(entry_id)
        if found is None:
            return None
        raw, entry = found
        return entry if self.entries.remove(raw) else None

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
