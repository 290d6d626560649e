"""Run the saver's operations (:mod:`.operations`) on a sync or an asyncio Redis client.

Each :class:`~.operations.Batch` is one call of the store's :class:`RetryPolicy`: transient
errors (connection dropped, timeout, loading, read-only during a failover) are retried within
its bounds and then raised as :class:`StoreUnavailable`; ``OOM`` raises :class:`StoreFull`.
A server that lost its scripts (restart, failover, SCRIPT FLUSH) gets them loaded again and
the batch is sent once more; every batch is idempotent, so resending is safe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
import redis.exceptions as rex
from agents_persistence.errors import StoreMisconfigured
from agents_persistence.langgraph.operations import Batch, ListOp, Op
from agents_persistence.langgraph.scripts import SCRIPT_NAMES, saver_script
from agents_persistence.retry import RetryPolicy, is_transient
from langgraph.checkpoint.base import CheckpointTuple

__all__ = ["AsyncDriver", "SyncDriver", "check_bytes", "single_node"]

T = TypeVar("T")


def _checked(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _typed(exc: rex.ResponseError) -> Exception:
    if "WRONGTYPE" in str(exc):
        return StoreMisconfigured("", "a key of the LangGraph saver holds another Redis type")
    return exc


class SyncDriver:
    """Runs operations on a ``redis.Redis`` (or ``RedisCluster``)."""

    def __init__(self, client: redis.Redis, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    def run(self, op: Op[T]) -> T:
        """Drive ``op`` to its result."""
        try:
            batch = next(op)
            while True:
                batch = op.send(self.execute(batch))
        except StopIteration as stop:
            result: T = stop.value
            return result

    def iterate(self, op: ListOp) -> Iterator[CheckpointTuple]:
        """Drive a listing, yielding the tuples it produces."""
        try:
            item = next(op)
            while True:
                if isinstance(item, Batch):
                    item = op.send(self.execute(item))
                else:
                    yield item
                    item = op.send(None)
        except StopIteration:
            return

    def execute(self, batch: Batch) -> list[Any]:
        """Send one batch (within the retry policy)."""
        return self.retry.call(batch.what, self._with_scripts, batch)

    def _with_scripts(self, batch: Batch) -> list[Any]:
        try:
            return self._send(batch)
        except rex.NoScriptError:
            for name in SCRIPT_NAMES:
                self.client.script_load(saver_script(name).source)
            return self._send(batch)

    def _send(self, batch: Batch) -> list[Any]:
        try:
            if len(batch.commands) == 1 and not batch.transaction:
                return [self.client.execute_command(*batch.commands[0])]  # type: ignore[no-untyped-call]
            pipe = self.client.pipeline(transaction=batch.transaction)
            for command in batch.commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            return _checked(pipe.execute(raise_on_error=False))
        except rex.ResponseError as exc:
            if is_transient(exc) or isinstance(exc, (rex.NoScriptError, rex.OutOfMemoryError)):
                raise
            raise _typed(exc) from exc


class AsyncDriver:
    """Runs operations on a ``redis.asyncio.Redis``."""

    def __init__(self, client: aredis.Redis, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    async def run(self, op: Op[T]) -> T:
        """Drive ``op`` to its result."""
        try:
            batch = next(op)
            while True:
                batch = op.send(await self.execute(batch))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def iterate(self, op: ListOp) -> AsyncIterator[CheckpointTuple]:
        """Drive a listing, yielding the tuples it produces."""
        try:
            item = next(op)
            while True:
                if isinstance(item, Batch):
                    item = op.send(await self.execute(item))
                else:
                    yield item
                    item = op.send(None)
        except StopIteration:
            return

    async def execute(self, batch: Batch) -> list[Any]:
        """Send one batch (within the retry policy)."""
        return await self.retry.acall(batch.what, self._with_scripts, batch)

    async def _with_scripts(self, batch: Batch) -> list[Any]:
        try:
            return await self._send(batch)
        except rex.NoScriptError:
            for name in SCRIPT_NAMES:
                await self.client.script_load(saver_script(name).source)
            return await self._send(batch)

    async def _send(self, batch: Batch) -> list[Any]:
        try:
            if len(batch.commands) == 1 and not batch.transaction:
                reply = await self.client.execute_command(*batch.commands[0])  # type: ignore[no-untyped-call]
                return [reply]
            async with self.client.pipeline(transaction=batch.transaction) as pipe:
                for command in batch.commands:
                    pipe.execute_command(*command)
                return _checked(await pipe.execute(raise_on_error=False))
        except rex.ResponseError as exc:
            if is_transient(exc) or isinstance(exc, (rex.NoScriptError, rex.OutOfMemoryError)):
                raise
            raise _typed(exc) from exc


def single_node(client: object) -> bool:
    """False for a Redis Cluster client (sync or asyncio)."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return not isinstance(client, (RedisCluster, AsyncRedisCluster))


def check_bytes(client: object, what: str) -> None:
    """Refuse a client that decodes responses (stored values are bytes)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ValueError(f"{what} must be built with decode_responses=False (values are bytes)")
