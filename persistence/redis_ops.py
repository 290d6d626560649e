"""The Redis store's logic without its I/O: what to send, and what the replies mean.

:class:`~agents_persistence.redis_store.RedisCheckpointer` (redis-py's blocking client) and
:class:`~agents_persistence.async_store.AsyncRedisCheckpointer` (its asyncio client) run the
same operations and differ only in how a request reaches the server. Each operation is a
generator (sans-I/O): it yields a :class:`Command` or a :class:`Pipeline` and is sent the
reply, or thrown the error, by the store's driver through an :class:`Exchange`. So the
compare-and-set arguments, the per-save outcomes, the NOSCRIPT fallback, record decoding,
the listing cursor and the cleanup loop are written once; a driver sends each request
through the store's retry policy (a request is idempotent: a pipeline is resent whole).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import redis.exceptions as rex
from agents_persistence.base import MAX_PAGE_SIZE, check_limit, check_page_size
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteOutcome, WriteResult
from agents_persistence.codec import (
    HEADER_SIZE,
    MAGIC,
    VERSION_END,
    VERSION_START,
    Codec,
    Record,
    format_version,
)
from agents_persistence.errors import CorruptState, InvalidInput, StoreMisconfigured
from agents_persistence.keys import Keys
from agents_persistence.scripts import LuaScript, lua
from agents_persistence.validation import MAX_VERSION, check_thread_id, check_version

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_SAVES",
    "INLINE_MAX_BYTES",
    "LARGE_RECORD_BYTES",
    "Command",
    "Exchange",
    "Op",
    "Pages",
    "Pipeline",
    "RedisOps",
    "Request",
    "Sweep",
]

#: Records up to this size go to the script as an argument (one EVALSHA); larger ones are
#: staged with SET inside MULTI/EXEC and RENAMEd, because copying a large argument into Lua
#: costs more than the extra commands (measured: bench/, P3).
INLINE_MAX_BYTES = 32 * 1024
#: Most saves, and most record bytes, in one MULTI/EXEC of a ``save_many``. One EXEC holds
#: Redis for all of its commands: a 30,000-save batch in one held every other client
#: ~0.3-1.4 s here; chunks of 500 hold it a few ms each (docs/bad-input.md).
CHUNK_SAVES = 500
CHUNK_BYTES = 8 * 1024 * 1024
#: Loads of a thread whose last record had at least this many bytes read header and body
#: apart (``MULTI; GETRANGE 0 39; GETRANGE 40 -1; EXEC``), so the body needs no copy to
#: drop the header: a second MB-sized allocation that may fault every page in afresh.
LARGE_RECORD_BYTES = 256 * 1024
#: How many such threads are remembered (oldest forgotten first).
_LARGE_HINTS = 4096
#: A staged record only outlives its transaction if the script failed; it then expires.
_STAGING_PX = 60_000
#: Errors in a pipeline's replies that concern the whole request, not one command.
_WHOLE_REQUEST_ERRORS = (
    rex.NoScriptError,
    rex.ConnectionError,
    rex.TimeoutError,
    rex.OutOfMemoryError,
)
_OUTCOMES = (WriteOutcome.WRITTEN, WriteOutcome.DUPLICATE, WriteOutcome.STALE)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command (``execute_command(*args)``)."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands sent in one round trip, as a MULTI/EXEC transaction if ``transaction``.

    With ``raise_on_error`` off, a command's error comes back in its slot of the reply;
    :meth:`check` still raises the errors that concern the whole request.
    """

    commands: tuple[tuple[Any, ...], ...]
    transaction: bool = False
    raise_on_error: bool = True

    @staticmethod
    def check(replies: list[Any]) -> list[Any]:
        """Raise a lost script (the fallback's cue), a dropped connection or an OOM (the
        retry policy's: StoreFull) found among ``replies``; return them otherwise."""
        for reply in replies:
            # A failed transaction only left the staging key behind; a rerun overwrites it.
            if isinstance(reply, _WHOLE_REQUEST_ERRORS):
                raise reply
        return replies


Request = Command | Pipeline
#: An operation: yields requests, is sent their replies, returns its result.
Op = Generator[Request, Any, T]


class Exchange(Generic[T]):
    """Runs an :data:`Op` for a driver: iterate it for the requests to send, and hand each
    one's reply to :meth:`reply` or its error to :meth:`fail`; then read :attr:`result`.

    An error the operation does not handle leaves the loop (raised from ``next``).
    """

    __slots__ = ("_error", "_op", "_reply", "result")

    result: T

    def __init__(self, op: Op[T]) -> None:
        self._op = op
        self._reply: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._op.throw(error)
            reply, self._reply = self._reply, None
            return self._op.send(reply)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None

    def reply(self, reply: Any) -> None:
        """The answer to the request last yielded."""
        self._reply = reply

    def fail(self, error: Exception) -> None:
        """The error the request last yielded ended in (raised inside the operation)."""
        self._error = error


class RedisOps:
    """The operations of one store: its keys, codec, TTLs and remembered large threads.

    Args:
        keys: the namespace's keys.
        codec: record encoding.
        ttl_ms: lifetime of a thread's state after each save, or None.
        tombstone_ttl_ms: lifetime of a delete's tombstone.
    """

    def __init__(self, keys: Keys, codec: Codec, ttl_ms: int | None, tombstone_ttl_ms: int):
        self.keys, self.codec = keys, codec
        self.tombstone_ttl_ms = tombstone_ttl_ms
        self._ttl_arg = b"" if ttl_ms is None else str(ttl_ms).encode()
        self._save, self._delete = lua("save"), lua("delete")
        self._page, self._cleanup = lua("page"), lua("cleanup")
        self._large: dict[str, None] = {}  # threads whose records were large: read split

    # -- writes -------------------------------------------------------------------------------
    def save_many(self, saves: Sequence[PreparedSave]) -> Op[list[WriteResult | Exception]]:
        """Each save's compare-and-set, in transactions of at most :data:`CHUNK_SAVES` saves
        and :data:`CHUNK_BYTES` bytes (one request each, so each has its own retries): its
        result, or the typed error that concerns only it (a header that cannot be written:
        not sent)."""
        results: list[WriteResult | Exception | None] = [None] * len(saves)
        chunk: list[tuple[int, PreparedSave, bytes]] = []
        size = 0
        for i, s in enumerate(saves):
            try:
                record = self.codec.pack(s.body, s.version, s.saved_at_ms)
            except InvalidInput as exc:
                results[i] = exc
                continue
            if chunk and (len(chunk) >= CHUNK_SAVES or size + len(record) > CHUNK_BYTES):
                yield from self._save_chunk(chunk, results)
                chunk, size = [], 0
            chunk.append((i, s, record))
            size += len(record)
        if chunk:
            yield from self._save_chunk(chunk, results)
        return [r for r in results if r is not None]

    def _save_chunk(
        self,
        chunk: list[tuple[int, PreparedSave, bytes]],
        results: list[WriteResult | Exception | None],
    ) -> Op[None]:
        if len(chunk) == 1 and len(chunk[0][2]) <= INLINE_MAX_BYTES:
            i, s, record = chunk[0]
            try:
                results[i] = _result(
                    s, (yield from self._script(self._save, Command(self._cas(s, record))))
                )
            except rex.ResponseError as exc:
                results[i] = _result(s, exc)
            return
        commands: list[tuple[Any, ...]] = []
        evals: list[int] = []
        for _, s, record in chunk:
            if len(record) <= INLINE_MAX_BYTES:
                commands.append(self._cas(s, record))
            else:
                commands.append(("SET", self.keys.staging, record, "PX", _STAGING_PX))
                commands.append(self._cas(s, None))
            evals.append(len(commands) - 1)
        pipeline = Pipeline(tuple(commands), transaction=True, raise_on_error=False)
        replies = yield from self._script(self._save, pipeline)
        for (i, s, _), at in zip(chunk, evals, strict=True):
            results[i] = _result(s, replies[at])

    def _cas(self, s: PreparedSave, record: bytes | None) -> tuple[Any, ...]:
        keys = self.keys
        args = (
            "EVALSHA", self._save.sha, 3, keys.thread(s.thread_id), keys.staging, keys.index,
            format_version(s.version), self._ttl_arg, s.thread_id,
        )  # fmt: skip
        return args if record is None else (*args, record)

    def delete(
        self, thread_id: str, version: int | None, clock: Callable[[], int]
    ) -> Op[WriteResult]:
        """Tombstone ``thread_id`` at ``version``, or above everything stored and above
        ``clock()`` (this process's versions) if None."""
        check_thread_id(thread_id)
        explicit = None if version is None else check_version(version)
        args = (
            b"" if explicit is None else format_version(explicit),
            self.tombstone_ttl_ms,
            thread_id,
            format_version(clock()),
        )
        keys = (self.keys.thread(thread_id), self.keys.index)
        code, current = yield from self._eval(self._delete, keys, args, thread_id)
        done = explicit if explicit is not None else int(current)
        return WriteResult(thread_id, done, _OUTCOMES[code], int(current))

    def sweep(self, limit: int | None) -> Sweep:
        """The cleanup of up to ``limit`` (None: all) expired index entries."""
        return Sweep(self, limit)

    # -- reads ----------------------------------------------------------------------------------
    def load(self, thread_id: str) -> Op[Checkpoint | None]:
        """The newest stored state of ``thread_id`` with its metadata, or None."""
        check_thread_id(thread_id)
        key = self.keys.thread(thread_id)
        large = thread_id in self._large
        record: Record | None = None
        try:
            if large:
                split = ("GETRANGE", key, 0, HEADER_SIZE - 1), ("GETRANGE", key, HEADER_SIZE, -1)
                head, body = yield Pipeline(split, transaction=True)
                if head:
                    record = self._decode_split(thread_id, head, body)
                else:  # gone, or an empty value: forget the hint, read it as anyone would
                    self._large.pop(thread_id, None)
                    large = False
            if not large:
                record = self._decode(thread_id, (yield Command(("GET", key))))
        except rex.ResponseError as exc:
            _raise_typed(thread_id, exc)
        if record is None or record.state is None:
            return None
        return Checkpoint(thread_id, record.version, record.saved_at, record.state)

    def _decode(self, thread_id: str, raw: Any) -> Record | None:
        if raw is None:
            return None
        if isinstance(raw, str):  # a client built with decode_responses=True
            raw = raw.encode()
        if len(raw) >= LARGE_RECORD_BYTES:
            self._large[thread_id] = None
            if len(self._large) > _LARGE_HINTS:
                self._large.pop(next(iter(self._large)), None)
        return self.codec.unpack(thread_id, raw)

    def _decode_split(self, thread_id: str, head: Any, body: Any) -> Record:
        if isinstance(head, str):  # a client built with decode_responses=True
            head, body = head.encode(), body.encode()
        if len(head) + len(body) < LARGE_RECORD_BYTES:
            self._large.pop(thread_id, None)
        return self.codec.unpack_split(thread_id, head, body)

    def pages(self, page_size: int) -> Pages:
        """The live threads, a page per request (see :meth:`Pages.next_page`)."""
        return Pages(self, page_size)

    def stored_versions(self, thread_ids: Sequence[str]) -> Op[dict[str, int]]:
        """The version held for each thread (0: nothing), from the record headers."""
        if not thread_ids:
            return {}
        heads = yield Pipeline(
            tuple(("GETRANGE", self.keys.thread(t), 0, VERSION_END - 1) for t in thread_ids),
            raise_on_error=False,
        )
        return {tid: _header_version(head) for tid, head in zip(thread_ids, heads, strict=True)}

    def count_threads(self) -> Op[tuple[int, int]]:
        """(live, expired but not yet cleaned) entries of the index, by the server's clock."""
        seconds, micros = yield Command(("TIME",))
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        index = self.keys.index
        total, expired = yield Pipeline((("ZCARD", index), ("ZCOUNT", index, "-inf", now_ms)))
        return int(total) - int(expired), int(expired)

    def ping(self) -> Op[None]:
        """One PING."""
        yield Command(("PING",))

    # -- scripts --------------------------------------------------------------------------------
    def _script(self, script: LuaScript, request: Request) -> Op[Any]:
        """Send ``request``, which runs ``script`` by its SHA; if the server lost its scripts
        (restart, failover, SCRIPT FLUSH: NOSCRIPT), load ``script`` and send it once more.

        The one NOSCRIPT fallback of both stores: single calls and pipelines both go here.
        """
        try:
            return (yield request)
        except rex.NoScriptError:
            yield Command(("SCRIPT LOAD", script.source))
        try:
            return (yield request)
        except rex.NoScriptError as exc:  # loaded, yet unknown: a proxy that drops scripts
            raise StoreMisconfigured("", f"script {script.name} cannot be kept loaded") from exc

    def _eval(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[object],
        thread_id: str | None = None,
    ) -> Op[Any]:
        command = Command(("EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            return (yield from self._script(script, command))
        except rex.ResponseError as exc:
            if thread_id is None:
                raise
            _raise_typed(thread_id, exc)


class Pages:
    """A listing's cursor (expiry score, then thread id) over the index.

    Raises:
        InvalidInput: ``page_size`` is not an int in 1 .. the largest page.
    """

    def __init__(self, ops: RedisOps, page_size: int) -> None:
        self._ops, self.page_size = ops, check_page_size(page_size)
        self._cursor, self._score = b"", b""
        self.done = False

    def next_page(self) -> Op[list[str]]:
        """The next page of thread ids; sets :attr:`done` after the last one."""
        ops = self._ops
        args = (self.page_size, self._cursor, self._score)
        flat = yield from ops._eval(ops._page, (ops.keys.index,), args)
        if len(flat) < 2 * self.page_size:
            self.done = True
        else:
            self._cursor, self._score = flat[-2], flat[-1]
        return [flat[i].decode("utf-8", "replace") for i in range(0, len(flat), 2)]


class Sweep:
    """Cleanup of up to ``limit`` (None: all) expired index entries, at most
    :data:`~agents_persistence.base.MAX_PAGE_SIZE` per request, so Redis is never held long.

    Raises:
        InvalidInput: ``limit`` is neither None nor a positive int.
    """

    def __init__(self, ops: RedisOps, limit: int | None) -> None:
        self._ops, self._limit = ops, check_limit(limit)
        self.removed = 0
        self.done = False

    def next_batch(self) -> Op[int]:
        """Remove one batch; sets :attr:`done` once nothing (or the limit) is left."""
        ops, limit = self._ops, self._limit
        batch = MAX_PAGE_SIZE if limit is None else min(MAX_PAGE_SIZE, limit - self.removed)
        n = int((yield from ops._eval(ops._cleanup, (ops.keys.index,), (batch,))))
        self.removed += n
        self.done = n < batch or (limit is not None and self.removed >= limit)
        return n


def _header_version(head: object) -> int:
    # Only a header with 20 digits up to MAX_VERSION is ours (as in the Lua scripts);
    # anything else reads as 0.
    if isinstance(head, bytes) and len(head) == VERSION_END and head.startswith(MAGIC):
        digits = head[VERSION_START:VERSION_END]
        if digits.isdigit() and int(digits) <= MAX_VERSION:
            return int(digits)
    return 0


def _result(s: PreparedSave, reply: Any) -> WriteResult | Exception:
    if isinstance(reply, Exception):
        return _typed(s.thread_id, reply)
    code, current = reply
    return WriteResult(s.thread_id, s.version, _OUTCOMES[code], int(current))


def _raise_typed(thread_id: str, exc: Exception) -> NoReturn:
    err = _typed(thread_id, exc)
    if err is exc:
        raise exc
    raise err from exc


def _typed(thread_id: str, exc: Exception) -> Exception:
    """The store's error for what Redis answered about one thread's key."""
    if isinstance(exc, rex.ResponseError) and "WRONGTYPE" in str(exc):
        err = CorruptState(thread_id, "its key holds a Redis value of another type")
    elif isinstance(exc, rex.ResponseError) and "NEWERSCHEMA" in str(exc):
        err = CorruptState(thread_id, "it was written by a newer envelope schema; not overwritten")
    else:
        return exc
    err.__cause__ = exc
    return err
