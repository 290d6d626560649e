"""``RedisCheckpointer``: the seed's Redis checkpointer, made atomic, versioned and retrying.

One save is one round trip. A small record travels as an argument of one ``EVALSHA save.lua``;
a large one (above ``INLINE_MAX_BYTES``) is kept off the Lua path:
``MULTI; SET staging <record> PX; EVALSHA save.lua; EXEC``. The script compares the new
version with the 24-byte header of the stored record (never the payload), then writes the
record (or RENAMEs the staged one) into place, sets its TTL and updates the index, or drops
the staged copy. One load is one ``GET`` (for a thread whose record was large, one
``MULTI; GETRANGE; GETRANGE; EXEC``).

What is sent and what the replies mean lives in :mod:`agents_persistence.redis_ops`, shared
with :class:`~agents_persistence.async_store.AsyncRedisCheckpointer`; this module sends it
with redis-py's blocking client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import redis
import redis.exceptions as rex
from agents_persistence.base import BaseCheckpointer
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteResult
from agents_persistence.connect import blocking_client
from agents_persistence.keys import Keys
from agents_persistence.redis_admin import RedisAdmin
from agents_persistence.redis_base import RedisStoreBase
from agents_persistence.redis_ops import (
    CHUNK_BYTES,
    CHUNK_SAVES,
    INLINE_MAX_BYTES,
    LARGE_RECORD_BYTES,
    Command,
    Exchange,
    Op,
    Pipeline,
    Request,
    SlotMoved,
    by_node,
    follow_ask,
    waited,
    waited_commands,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_SAVES",
    "INLINE_MAX_BYTES",
    "LARGE_RECORD_BYTES",
    "RedisCheckpointer",
]

T = TypeVar("T")


class RedisCheckpointer(RedisStoreBase[redis.Redis], RedisAdmin, BaseCheckpointer):
    """Agent state in Redis through redis-py's blocking client (or ``fakeredis.FakeRedis``):
    versioned writes, TTL, a thread index and retries. Arguments: see
    :class:`~agents_persistence.redis_base.RedisStoreBase`."""

    @classmethod
    def _connect(cls, url: str, **options: Any) -> redis.Redis:
        return cast(redis.Redis, blocking_client(url, retry=Retry(NoBackoff(), 0), **options))

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    @property
    def keys(self) -> Keys:
        """The namespace's keys, in its layout (read from Redis on first use)."""
        if not self._ops.resolved:
            self._resolve()
        return self._ops.keys

    def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        """Apply many prepared saves, in transactions of at most :data:`CHUNK_SAVES` saves
        and :data:`CHUNK_BYTES` bytes each (one round trip each), so no single ``EXEC``
        holds Redis for long; each chunk has its own retries. A save whose header cannot
        be written (version, save time) gets its own typed error and is not sent."""
        return self._run("save", self._ops.save_many(saves))

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        return self._run("delete", self._ops.delete(thread_id, version, self._next_version))

    def cleanup_expired(self, limit: int | None = None) -> int:
        """Drop up to ``limit`` (default: all) expired entries from the index.

        The records expire inside Redis on their own; this keeps the index from growing.
        Cost grows with the number of expired entries, not with the index. Safe to run from
        several processes at once.
        """
        sweep = self._ops.sweep(limit)
        while not sweep.done:
            self._run("cleanup", sweep.next_batch())
        return sweep.removed

    # -- reads ----------------------------------------------------------------------------------
    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        return self._run("load", self._ops.load(thread_id))

    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        pages = self._ops.pages(page_size)
        while not pages.done:
            yield from self._run("list", pages.next_page())

    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        return self._run("versions", self._ops.stored_versions(thread_ids))

    def count_threads(self) -> tuple[int, int]:
        return self._run("count", self._ops.count_threads())

    # -- the driver -----------------------------------------------------------------------------
    def _run(self, what: str, op: Op[T]) -> T:
        """Run an operation, each of its requests through the retry policy (after reading
        the namespace's layout, the first time).

        What :class:`Exchange` does, inlined (one load or save is one request: the
        driver's own overhead is a measurable part of it, bench/ P3): each reply is sent
        into the operation, each error thrown into it; an error it does not handle leaves.
        """
        if not self._ops.resolved:
            self._resolve(what)
        call, send = self.retry.call, self._send
        try:
            request = next(op)
            while True:
                try:
                    reply = call(what, send, request)
                except Exception as exc:
                    request = op.throw(exc)
                else:
                    request = op.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)

    def _send(self, request: Request) -> Any:
        if isinstance(request, Command):
            return self.client.execute_command(*request.args)  # type: ignore[no-untyped-call]
        if request.wait is not None or self._ops.cluster:
            return self._send_pinned(request)
        pipe = self.client.pipeline(transaction=request.transaction)
        for args in request.commands:
            pipe.execute_command(*args)  # type: ignore[no-untyped-call]
        return request.check(pipe.execute(raise_on_error=request.raise_on_error))

    def _send_pinned(self, request: Pipeline) -> Any:
        """``request`` (then ``WAIT``, if it asks) as plain pipelines on one connection per
        node: ``[MULTI ... EXEC] [WAIT]``. On a cluster, one pipeline per node serving the
        commands' slots (redis-py's cluster pipeline costs several times more). Commands a
        node answers ``ASK`` (their slot is migrating) go to the importing node after
        ``ASKING`` (:func:`~agents_persistence.redis_ops.follow_ask`); when a node is gone
        or a slot moved (``MOVED``), the slot map is refreshed and the retry resends it all."""
        if not self._ops.cluster:
            pipe = self.client.pipeline(transaction=False)
            for args in waited_commands(request):
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            return waited(request, pipe.execute(raise_on_error=False))
        cluster: Any = self.client
        replies: list[Any] = [None] * len(request.commands)
        try:
            for node, part, where in by_node(request, cluster.get_node_from_key):
                got = self._node_pipeline(node, waited_commands(part))
                asked = follow_ask(part, got)
                if asked is not None:  # the slot is migrating: ask the importing node
                    target = cluster.get_node(host=asked.host, port=asked.port)
                    if target is None:
                        raise SlotMoved(f"ASK to an unknown node {asked.host}:{asked.port}")
                    got = asked.merge(got, self._node_pipeline(target, asked.commands))
                for i, reply in zip(where, waited(part, got), strict=True):
                    replies[i] = reply
        except (rex.ConnectionError, rex.TimeoutError, SlotMoved):
            with contextlib.suppress(Exception):  # the retry refreshes again if need be
                cluster.nodes_manager.initialize()
            raise
        return replies

    def _node_pipeline(self, node: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one plain pipeline on a connection of cluster ``node``."""
        cluster: Any = self.client
        pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return list(pipe.execute(raise_on_error=False))

    def _forget_layout(self) -> None:
        self._ops.resolved = False

    def _resolve(self, what: str = "layout") -> None:
        exchange = Exchange(self._ops.resolve())
        for request in exchange:
            try:
                exchange.reply(self.retry.call(what, self._send, request))
            except Exception as exc:
                exchange.fail(exc)
