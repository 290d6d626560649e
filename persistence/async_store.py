"""``AsyncRedisCheckpointer``: the Redis store on redis-py's asyncio client.

The same scripts, keys, records, validation, errors, version clock and retry policy as
:class:`~agents_persistence.redis_store.RedisCheckpointer` — both run the operations of
:mod:`agents_persistence.redis_ops` and differ only in how a request reaches the server:
here every round trip and every retry backoff is awaited (tenacity's ``AsyncRetrying``),
so a store outage never blocks the event loop.

Validating and encoding a snapshot (:meth:`prepare`) runs on the caller's loop: about as
long as serialising it to JSON (tens of µs for a few KB; a multi-MB snapshot takes ms).

A save cancelled while in flight leaves no half-written record: the compare-and-set is one
Lua script (or one MULTI/EXEC), applied whole or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aredis
import redis.exceptions as rex
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteResult
from agents_persistence.connect import asyncio_client
from agents_persistence.keys import Keys
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.redis_base import RedisStoreBase
from agents_persistence.redis_ops import (
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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["DEFAULT_MAX_CONNECTIONS", "AsyncRedisCheckpointer"]

T = TypeVar("T")
#: Connections a store made by ``from_url`` opens at most (``max_connections=`` to change);
#: further concurrent calls wait for one (``timeout=``, default 20 s, then a retried
#: ConnectionError), so any number of coroutines may share one store.
DEFAULT_MAX_CONNECTIONS = 64


class AsyncRedisCheckpointer(RedisStoreBase[aredis.Redis]):
    """Agent state in Redis through ``redis.asyncio.Redis`` (or
    ``fakeredis.aioredis.FakeRedis``): every method of the blocking store's contract,
    awaitable. Arguments: see :class:`~agents_persistence.redis_base.RedisStoreBase`.

    Use ``async with`` (or :meth:`aclose`) to close its connections. A store made by
    :meth:`from_url` keeps at most :data:`DEFAULT_MAX_CONNECTIONS` of them and lets further
    concurrent calls wait for one; over a client of your own, size its pool for your
    concurrency (redis-py's asyncio pool refuses calls beyond ``max_connections``).
    """

    @classmethod
    def _connect(cls, url: str, **options: Any) -> aredis.Redis:
        # A blocking pool: redis-py's asyncio pool refuses call number 101 (default 100
        # connections) with MaxConnectionsError, which no retry may fix; thousands of
        # coroutines sharing one store must wait for a connection instead.
        options.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
        client = asyncio_client(url, retry=Retry(NoBackoff(), 0), **options)
        return cast(aredis.Redis, client)

    @property
    def keys(self) -> Keys:
        """The namespace's keys: in its layout once a call has read it (before that, the
        sharded layout of new namespaces)."""
        return self._ops.keys

    async def aclose(self) -> None:
        """Close the client's connections."""
        for client in self.__dict__.pop("_node_clients", {}).values():
            await client.aclose()
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- writes ---------------------------------------------------------------------------------
    async def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> WriteResult:
        """Store ``state`` at ``version`` (from the process clock if None) if it is newer.

        Returns and raises as :meth:`RedisCheckpointer.save_state` does.
        """
        return await self.save_prepared(self.prepare(thread_id, state, version=version))

    async def save_prepared(self, save: PreparedSave) -> WriteResult:
        """Apply one prepared save (see :meth:`save_many`)."""
        return self._only(await self.save_many([save]))

    async def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        """Apply prepared saves, each with its own compare-and-set: one result (or the
        typed error of that save alone) per save, in order. Store-wide failures raise."""
        return await self._run("save", self._ops.save_many(saves))

    async def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        """Delete a thread, leaving a tombstone (see :meth:`RedisCheckpointer.delete_thread`)."""
        return await self._run("delete", self._ops.delete(thread_id, version, self._next_version))

    async def cleanup_expired(self, limit: int | None = None) -> int:
        """Drop up to ``limit`` (default: all) expired entries from the index; how many."""
        sweep = self._ops.sweep(limit)
        while not sweep.done:
            await self._run("cleanup", sweep.next_batch())
        return sweep.removed

    # -- reads ----------------------------------------------------------------------------------
    async def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        """The newest stored state of ``thread_id``, or None."""
        checkpoint = await self.load_checkpoint(thread_id)
        return None if checkpoint is None else checkpoint.state

    async def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        """The newest stored state with its version and save time, or None."""
        return await self._run("load", self._ops.load(thread_id))

    async def list_threads(self) -> list[str]:
        """Every thread with live state (expired ones excluded even before cleanup)."""
        return list(dict.fromkeys([tid async for tid in self.iter_threads()]))

    async def iter_threads(self, page_size: int = 500) -> AsyncIterator[str]:
        """Live thread ids a page (one round trip) at a time, ordered by expiry then id."""
        pages = self._ops.pages(page_size)
        while not pages.done:
            for thread_id in await self._run("list", pages.next_page()):
                yield thread_id

    async def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        """The version held for each thread (state or tombstone; 0: nothing)."""
        return await self._run("versions", self._ops.stored_versions(thread_ids))

    async def count_threads(self) -> tuple[int, int]:
        """(live, expired but not yet cleaned) entries of the index."""
        return await self._run("count", self._ops.count_threads())

    async def ping(self) -> None:
        """Return once the server answers PING (within the retry policy)."""
        await self._run("ping", self._ops.ping())

    # -- the driver -----------------------------------------------------------------------------
    def _node_client(self, node: Any) -> aredis.Redis:
        """A client of one cluster node (one per node, kept until :meth:`aclose`)."""
        clients: dict[str, aredis.Redis] = self.__dict__.setdefault("_node_clients", {})
        client = clients.get(node.name)
        if client is None:
            pool = aredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            client = clients[node.name] = aredis.Redis.from_pool(pool)
        return client

    async def _node_pipeline(self, node: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one plain pipeline on a connection of cluster ``node``."""
        pipe = self._node_client(node).pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return list(await pipe.execute(raise_on_error=False))

    async def _send_pinned(self, request: Pipeline) -> Any:
        """``request`` (then ``WAIT``, if it asks) as plain pipelines on one connection per
        node (see :meth:`RedisCheckpointer._send_pinned`)."""
        if not self._ops.cluster:
            pipe = self.client.pipeline(transaction=False)
            for args in waited_commands(request):
                pipe.execute_command(*args)
            return waited(request, await pipe.execute(raise_on_error=False))
        cluster: Any = self.client
        replies: list[Any] = [None] * len(request.commands)
        try:
            for node, part, where in by_node(request, cluster.get_node_from_key):
                got = await self._node_pipeline(node, waited_commands(part))
                asked = follow_ask(part, got)
                if asked is not None:  # the slot is migrating: ask the importing node
                    target = cluster.get_node(host=asked.host, port=asked.port)
                    if target is None:
                        raise SlotMoved(f"ASK to an unknown node {asked.host}:{asked.port}")
                    got = asked.merge(got, await self._node_pipeline(target, asked.commands))
                for i, reply in zip(where, waited(part, got), strict=True):
                    replies[i] = reply
        except (rex.ConnectionError, rex.TimeoutError, SlotMoved):
            with contextlib.suppress(Exception):  # the retry refreshes again if need be
                await cluster.nodes_manager.initialize()
            raise
        return replies

    async def _run(self, what: str, op: Op[T]) -> T:
        """Run an operation, each of its requests awaited through the retry policy (after
        reading the namespace's layout, the first time)."""
        if not self._ops.resolved:
            await self._drive(what, self._ops.resolve())
        return await self._drive(what, op)

    async def _drive(self, what: str, op: Op[T]) -> T:
        exchange = Exchange(op)
        for request in exchange:
            try:
                exchange.reply(await self.retry.acall(what, self._send, request))
            except Exception as exc:
                exchange.fail(exc)
        return exchange.result

    async def _send(self, request: Request) -> Any:
        if isinstance(request, Command):
            return await self.client.execute_command(*request.args)  # type: ignore[no-untyped-call]
        if request.wait is not None or self._ops.cluster:
            return await self._send_pinned(request)
        pipe = self.client.pipeline(transaction=request.transaction)
        for args in request.commands:
            pipe.execute_command(*args)
        return request.check(await pipe.execute(raise_on_error=request.raise_on_error))
