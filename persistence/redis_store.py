"""``RedisCheckpointer``: the seed's Redis checkpointer, made atomic, versioned and retrying.

One save is one round trip. A small record travels as an argument of one ``EVALSHA save.lua``;
a large one (above ``INLINE_MAX_BYTES``) is kept off the Lua path:
``MULTI; SET staging <record> PX; EVALSHA save.lua; EXEC``. The script compares the new
version with the 24-byte header of the stored record (never the payload), then writes the
record (or RENAMEs the staged one) into place, sets its TTL and updates the index, or drops
the staged copy. One load is one ``GET`` (for a thread whose record was large, one
``MULTI; GETRANGE; GETRANGE; EXEC``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.exceptions as rex
from agents_persistence.base import (
    DEFAULT_NAMESPACE,
    DEFAULT_TOMBSTONE_TTL,
    MAX_PAGE_SIZE,
    BaseCheckpointer,
    TTLLike,
    check_limit,
    check_page_size,
)
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
from agents_persistence.redis_admin import RedisAdmin
from agents_persistence.retry import RetryPolicy, is_transient
from agents_persistence.scripts import LuaScript, lua
from agents_persistence.validation import check_thread_id
from agents_persistence.versions import VersionClock
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from agents_persistence.config.settings import Settings

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_SAVES",
    "INLINE_MAX_BYTES",
    "LARGE_RECORD_BYTES",
    "RedisCheckpointer",
]

#: Records up to this size go to the script as an argument (one EVALSHA); larger ones are
#: staged with SET inside MULTI/EXEC and RENAMEd, because copying a large argument into Lua
#: costs more than the extra commands (measured: bench/, P3).
INLINE_MAX_BYTES = 32 * 1024
#: Most saves, and most record bytes, in one MULTI/EXEC of :meth:`RedisCheckpointer.save_many`.
#: One EXEC holds Redis for all of its commands: a 30,000-save batch in one held every
#: other client ~0.3-1.4 s here; chunks of 500 hold it a few ms each (docs/bad-input.md).
CHUNK_SAVES = 500
CHUNK_BYTES = 8 * 1024 * 1024
#: Loads of a thread whose last record had at least this many bytes read header and body
#: apart (``MULTI; GETRANGE 0 39; GETRANGE 40 -1; EXEC``), so the body needs no copy to
#: drop the header: a second MB-sized allocation that may fault every page in afresh.
LARGE_RECORD_BYTES = 256 * 1024
#: How many such threads are remembered (oldest forgotten first).
_LARGE_HINTS = 4096


def _header_version(head: object) -> int:
    # Only a header with 20 digits is ours (as in the Lua scripts); anything else reads as 0.
    if isinstance(head, bytes) and len(head) == VERSION_END and head.startswith(MAGIC):
        digits = head[VERSION_START:VERSION_END]
        if digits.isdigit():
            return int(digits)
    return 0


T = TypeVar("T")

_OUTCOMES = (WriteOutcome.WRITTEN, WriteOutcome.DUPLICATE, WriteOutcome.STALE)
#: A staged record only outlives its transaction if the script failed; it then expires.
_STAGING_PX = 60_000


class RedisCheckpointer(RedisAdmin, BaseCheckpointer):
    """Agent state in Redis, with versioned writes, TTL, a thread index and retries.

    Args:
        client: a ``redis.Redis`` (or ``fakeredis.FakeRedis``) with ``decode_responses``
            off. Its own retry should be disabled; :meth:`from_url` does that, so the
            policy below is the only one.
        namespace: first segment of every key (letters, digits, ``_.-``).
        ttl: lifetime of a thread's state after each save (``timedelta`` or seconds,
            millisecond precision), or None to keep it.
        tombstone_ttl: how long a delete keeps older saves out.
        codec: encoding, size cap and compression.
        retry: the transient-error policy.
        clock: where versions come from when a caller gives none.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        retry: RetryPolicy | None = None,
        clock: VersionClock | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace, ttl=ttl, tombstone_ttl=tombstone_ttl, codec=codec, clock=clock
        )
        self.client = client
        self.keys = Keys(namespace)
        self.retry = retry if retry is not None else RetryPolicy()
        self._save = lua("save")
        self._delete = lua("delete")
        self._page = lua("page")
        self._cleanup = lua("cleanup")
        self._ttl_arg = b"" if self.ttl_ms is None else str(self.ttl_ms).encode()
        self._large: dict[str, None] = {}  # threads whose records were large: read split

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        retry: RetryPolicy | None = None,
        clock: VersionClock | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        **redis_kwargs: Any,
    ) -> RedisCheckpointer:
        """Connect to ``redis://``, ``rediss://`` (TLS) or ``unix://`` ``url``.

        Extra keyword arguments go to ``redis.Redis.from_url`` (``max_connections``,
        ``ssl_ca_certs``, ...).
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            **redis_kwargs,
        )
        return cls(
            client,
            namespace=namespace,
            ttl=ttl,
            tombstone_ttl=tombstone_ttl,
            codec=codec,
            retry=retry,
            clock=clock,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisCheckpointer:
        """Build from :class:`config.Settings` (URL, namespace, TTLs, caps, retry bounds)."""
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            namespace=settings.namespace,
            ttl=settings.ttl_seconds,
            tombstone_ttl=settings.tombstone_ttl_seconds,
            codec=settings.build_codec(),
            retry=settings.build_retry_policy(),
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_connect_timeout_seconds,
        )

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisCheckpointer(namespace={self.namespace!r}, ttl={self.ttl!r})"

    # -- writes ---------------------------------------------------------------------------------
    def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        """Apply many prepared saves, in transactions of at most :data:`CHUNK_SAVES` saves
        and :data:`CHUNK_BYTES` bytes each (one round trip each), so no single ``EXEC``
        holds Redis for long; each chunk has its own retries. A save whose header cannot
        be written (version, save time) gets its own typed error and is not sent."""
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
                self._save_chunk(chunk, results)
                chunk, size = [], 0
            chunk.append((i, s, record))
            size += len(record)
        if chunk:
            self._save_chunk(chunk, results)
        return [r for r in results if r is not None]

    def _save_chunk(
        self,
        chunk: list[tuple[int, PreparedSave, bytes]],
        results: list[WriteResult | Exception | None],
    ) -> None:
        saves = [s for _, s, _ in chunk]
        records = [record for _, _, record in chunk]
        done = self.retry.call("save", self._save_many_once, saves, records)
        for (i, _, _), result in zip(chunk, done, strict=True):
            results[i] = result

    def _save_many_once(
        self, saves: Sequence[PreparedSave], records: Sequence[bytes]
    ) -> list[WriteResult | Exception]:
        keys, sha = self.keys, self._save.sha
        staging, index, ttl = keys.staging, keys.index, self._ttl_arg
        if len(saves) == 1 and len(records[0]) <= INLINE_MAX_BYTES:
            return [self._save_inline(saves[0], records[0])]
        pipe = self.client.pipeline(transaction=True)
        evals: list[int] = []
        for s, record in zip(saves, records, strict=True):
            if len(record) <= INLINE_MAX_BYTES:
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", sha, 3, keys.thread(s.thread_id), staging, index,
                    format_version(s.version), ttl, s.thread_id, record,
                )  # fmt: skip
            else:
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "SET", staging, record, "PX", _STAGING_PX
                )
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", sha, 3, keys.thread(s.thread_id), staging, index,
                    format_version(s.version), ttl, s.thread_id,
                )  # fmt: skip
            evals.append(len(pipe.command_stack) - 1)
        replies = self._execute(pipe, self._save)
        return [self._result(s, replies[i]) for s, i in zip(saves, evals, strict=True)]

    def _save_inline(self, s: PreparedSave, record: bytes) -> WriteResult | Exception:
        args = (
            self._save.sha, 3, self.keys.thread(s.thread_id), self.keys.staging, self.keys.index,
            format_version(s.version), self._ttl_arg, s.thread_id, record,
        )  # fmt: skip
        try:
            reply = self._with_script(
                self._save,
                lambda: self.client.execute_command("EVALSHA", *args),  # type: ignore[no-untyped-call]
            )
        except rex.ResponseError as exc:
            # read-only replica, TRYAGAIN...: the retry policy's call; OOM: StoreFull there
            if is_transient(exc) or isinstance(exc, rex.OutOfMemoryError):
                raise
            return self._result(s, exc)
        return self._result(s, reply)

    @staticmethod
    def _result(s: PreparedSave, reply: Any) -> WriteResult | Exception:
        if isinstance(reply, Exception):
            return RedisCheckpointer._typed(s.thread_id, reply)
        code, current = reply
        return WriteResult(s.thread_id, s.version, _OUTCOMES[code], int(current))

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        check_thread_id(thread_id)
        explicit = self._delete_version(version)
        clock = self._next_version()
        args = (
            b"" if explicit is None else format_version(explicit),
            self.tombstone_ttl_ms,
            thread_id,
            format_version(clock),
        )
        reply = self.retry.call(
            "delete", self._eval, self._delete, (self.keys.thread(thread_id), self.keys.index),
            args, thread_id,
        )  # fmt: skip
        code, current = reply
        return WriteResult(
            thread_id, explicit if explicit is not None else int(current), _OUTCOMES[code],
            int(current),
        )  # fmt: skip

    def cleanup_expired(self, limit: int | None = None) -> int:
        """Drop up to ``limit`` (default: all) expired entries from the index.

        The records expire inside Redis on their own; this keeps the index from growing.
        Cost grows with the number of expired entries, not with the index. Safe to run from
        several processes at once.
        """
        check_limit(limit)
        removed = 0
        while True:
            # one script call removes at most MAX_PAGE_SIZE entries: Redis is never held long
            batch = MAX_PAGE_SIZE if limit is None else min(MAX_PAGE_SIZE, limit - removed)
            n = int(self.retry.call("cleanup", self._eval, self._cleanup, (self.keys.index,),
                                    (batch,)))  # fmt: skip
            removed += n
            if n < batch or (limit is not None and removed >= limit):
                return removed

    # -- reads ----------------------------------------------------------------------------------
    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        check_thread_id(thread_id)
        key = self.keys.thread(thread_id)
        large = thread_id in self._large
        record: Record | None = None
        try:
            if large:
                head, body = self.retry.call("load", self._get_split, key)
                if head:
                    record = self._decode_split(thread_id, head, body)
                else:  # gone, or an empty value: forget the hint, read it as anyone would
                    self._large.pop(thread_id, None)
                    large = False
            if not large:
                raw = self.retry.call("load", self.client.get, key)
                record = self._decode(thread_id, raw)
        except rex.ResponseError as exc:
            raise self._typed(thread_id, exc) from exc
        if record is None or record.state is None:
            return None
        return Checkpoint(thread_id, record.version, record.saved_at, record.state)

    def _get_split(self, key: str) -> list[Any]:
        pipe = self.client.pipeline(transaction=True)
        pipe.getrange(key, 0, HEADER_SIZE - 1)
        pipe.getrange(key, HEADER_SIZE, -1)
        replies: list[Any] = pipe.execute()
        return replies

    def _decode(self, thread_id: str, raw: Any) -> Record | None:
        if raw is None:
            return None
        if isinstance(raw, str):  # a client built with decode_responses=True
            raw = raw.encode()
        if len(raw) >= LARGE_RECORD_BYTES:
            self._remember_large(thread_id)
        return self.codec.unpack(thread_id, raw)

    def _decode_split(self, thread_id: str, head: Any, body: Any) -> Record:
        if isinstance(head, str):  # a client built with decode_responses=True
            head, body = head.encode(), body.encode()
        if len(head) + len(body) < LARGE_RECORD_BYTES:
            self._large.pop(thread_id, None)
        return self.codec.unpack_split(thread_id, head, body)

    def _remember_large(self, thread_id: str) -> None:
        large = self._large
        large[thread_id] = None
        if len(large) > _LARGE_HINTS:
            large.pop(next(iter(large)), None)

    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        check_page_size(page_size)
        cursor, score = b"", b""
        while True:
            flat = self.retry.call(
                "list", self._eval, self._page, (self.keys.index,), (page_size, cursor, score)
            )
            for i in range(0, len(flat), 2):
                yield flat[i].decode("utf-8", "replace")
            if len(flat) < 2 * page_size:
                return
            cursor, score = flat[-2], flat[-1]

    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        if not thread_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for tid in thread_ids:
            pipe.getrange(self.keys.thread(tid), 0, VERSION_END - 1)
        heads = self.retry.call("versions", pipe.execute, raise_on_error=False)
        return {tid: _header_version(head) for tid, head in zip(thread_ids, heads, strict=True)}

    def count_threads(self) -> tuple[int, int]:
        now_ms = self._server_time_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.index)
        pipe.zcount(self.keys.index, "-inf", now_ms)
        total, expired = self.retry.call("count", pipe.execute)
        return int(total) - int(expired), int(expired)

    def _server_time_ms(self) -> int:
        seconds, micros = self.retry.call("time", self.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    # -- plumbing ---------------------------------------------------------------------------------
    def _with_script(self, script: LuaScript, call: Callable[[], T]) -> T:
        """``call()``, which runs ``script`` by its SHA; if the server lost its scripts
        (restart, failover, SCRIPT FLUSH: NOSCRIPT), load ``script`` and call once more.

        The one NOSCRIPT fallback of the store: single calls and pipelines both go here.
        """
        try:
            return call()
        except rex.NoScriptError:
            self.client.script_load(script.source)
        try:
            return call()
        except rex.NoScriptError as exc:  # loaded, yet unknown: a proxy that drops scripts
            raise StoreMisconfigured("", f"script {script.name} cannot be kept loaded") from exc

    def _execute(self, pipe: Any, script: LuaScript) -> list[Any]:
        """Run a pipeline holding EVALSHAs of ``script`` (replies, errors included)."""
        commands = list(pipe.command_stack)

        def run() -> list[Any]:
            pipe.reset()
            pipe.command_stack.extend(commands)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            for reply in replies:
                # A failed transaction only left the staging key behind; the rerun
                # overwrites it.
                if isinstance(reply, rex.NoScriptError):
                    raise reply
            return replies

        replies = self._with_script(script, run)
        for reply in replies:
            if isinstance(reply, (rex.ConnectionError, rex.TimeoutError, rex.OutOfMemoryError)):
                raise reply  # store-wide: the retry policy decides (OOM: StoreFull)
        return replies

    def _eval(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[object],
        thread_id: str | None = None,
    ) -> Any:
        try:
            return self._with_script(
                script,
                lambda: self.client.evalsha(script.sha, len(keys), *keys, *args),  # type: ignore[arg-type]
            )
        except rex.ResponseError as exc:
            typed = None if thread_id is None else self._typed(thread_id, exc)
            if typed is not None and typed is not exc:
                raise typed from exc
            raise

    @staticmethod
    def _typed(thread_id: str, exc: Exception) -> Exception:
        if isinstance(exc, rex.ResponseError) and "WRONGTYPE" in str(exc):
            err = CorruptState(thread_id, "its key holds a Redis value of another type")
            err.__cause__ = exc
            return err
        if isinstance(exc, rex.ResponseError) and "NEWERSCHEMA" in str(exc):
            err = CorruptState(
                thread_id, "it was written by a newer envelope schema; not overwritten"
            )
            err.__cause__ = exc
            return err
        return exc
