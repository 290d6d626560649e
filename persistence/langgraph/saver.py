"""``RedisCheckpointSaver``: a LangGraph checkpointer on plain Redis (6.2+) or Valkey.

No modules (RediSearch, RedisJSON): sorted sets order checkpoints and pending writes, hashes
hold records and blobs, Lua scripts keep multi-key changes atomic, and every key of a thread
shares one hash slot, so it runs on Redis Cluster too (layout: :mod:`.keys`). Checkpoints,
metadata, blobs and writes are encoded by LangGraph's serializer (``self.serde``), so its
allow-list applies and :meth:`with_allowlist` copies work.

One ``put`` is one MULTI/EXEC round trip; one ``get_tuple`` is one script call that returns
the checkpoint with its values and pending writes; ``put_writes`` is one script call.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aredis
from agents_persistence.base import DEFAULT_NAMESPACE, TTLLike, to_milliseconds
from agents_persistence.connect import asyncio_client, blocking_client, parse_store_url
from agents_persistence.langgraph import records as rec
from agents_persistence.langgraph.driver import AsyncDriver, SyncDriver, check_bytes, single_node
from agents_persistence.langgraph.handoff import from_wire
from agents_persistence.langgraph.history import delta_history
from agents_persistence.langgraph.keys import SaverKeys
from agents_persistence.langgraph.maintenance import Maintenance
from agents_persistence.langgraph.operations import Layout, target
from agents_persistence.langgraph.writebehind import WriteBehind, as_handoff
from agents_persistence.retry import RetryPolicy
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from agents_persistence.config.settings import Settings

__all__ = ["RedisCheckpointSaver"]


class RedisCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in Redis, with TTL, namespaces and the store's retry policy.

    Args:
        client: a ``redis.Redis`` for the sync methods (``decode_responses`` off; its own
            retry disabled, as :meth:`from_url` does, so the policy below is the only one).
        aclient: a ``redis.asyncio.Redis`` for the async methods. Without it they run the
            sync ones in a worker thread; without ``client`` the sync ones raise.
        namespace: first segment of every key (letters, digits, ``_.-``).
        ttl: lifetime of a thread (``timedelta`` or seconds) after its last ``put`` (every key
            of the thread gets a fresh TTL then; ``put_writes`` refreshes its namespace's
            writes), or None to keep threads until deleted.
        refresh_on_read: reads (``get_tuple``, ``list``) refresh a thread's TTL too.
        serde: LangGraph serializer (default: ``JsonPlusSerializer``).
        retry: the transient-error policy (the core's).

    Raises:
        ValueError: no client at all, a client that decodes responses, or a bad TTL.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        aclient: aredis.Redis | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        refresh_on_read: bool = False,
        serde: SerializerProtocol | None = None,
        retry: RetryPolicy | None = None,
        handoff: object | None = None,
        handoff_timeout: float = 30.0,
    ) -> None:
        super().__init__(serde=serde)
        if client is None and aclient is None:
            raise ValueError("RedisCheckpointSaver needs a client, an aclient or both")
        check_bytes(client, "client")
        check_bytes(aclient, "aclient")
        self.client = client
        self.aclient = aclient
        self.retry = retry if retry is not None else RetryPolicy()
        self.layout = Layout(
            SaverKeys(namespace),
            ttl_ms=to_milliseconds(ttl, "ttl"),
            refresh_on_read=refresh_on_read,
            single_node=single_node(client if client is not None else aclient),
        )
        self._sync = None if client is None else SyncDriver(client, self.retry)
        self._async = None if aclient is None else AsyncDriver(aclient, self.retry)
        self._behind: WriteBehind | None = None
        if handoff is not None:
            if self._sync is None:
                raise ValueError("write-behind (handoff=) needs a sync client")
            self._behind = WriteBehind(
                as_handoff(handoff), self.namespace, self._sync, handoff_timeout
            )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        refresh_on_read: bool = False,
        serde: SerializerProtocol | None = None,
        retry: RetryPolicy | None = None,
        handoff: object | None = None,
        handoff_timeout: float = 30.0,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        **redis_kwargs: Any,
    ) -> RedisCheckpointSaver:
        """Connect to a store URL (``redis://``, ``rediss://``, ``unix://``,
        ``redis+cluster://``, ``redis+sentinel://``...: :mod:`agents_persistence.connect`)
        with a sync and an asyncio client (neither connects before its first command). Extra
        keyword arguments go to both clients (``max_connections``, ``ssl_ca_certs``...).
        ``handoff``: a ``CeleryCheckpointer`` (or a :class:`CheckpointHandOff`) for write-behind.
        """
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "health_check_interval": 30,
            **redis_kwargs,
        }
        client = cast(redis.Redis, blocking_client(url, retry=Retry(NoBackoff(), 0), **common))
        aretry = aredis.retry.Retry(NoBackoff(), 0)
        if parse_store_url(url).kind == "single":
            aclient = aredis.Redis.from_url(url, retry=aretry, **common)
        else:  # a RedisCluster, or the primary a Sentinel names
            aclient = cast(aredis.Redis, asyncio_client(url, retry=aretry, **common))
        return cls(
            client,
            aclient=aclient,
            namespace=namespace,
            ttl=ttl,
            refresh_on_read=refresh_on_read,
            serde=serde,
            retry=retry,
            handoff=handoff,
            handoff_timeout=handoff_timeout,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        refresh_on_read: bool = False,
        serde: SerializerProtocol | None = None,
        handoff: object | None = None,
        handoff_timeout: float = 30.0,
    ) -> RedisCheckpointSaver:
        """Build from :class:`config.Settings` (URL, namespace, TTL, retry bounds, timeouts)."""
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            namespace=settings.namespace,
            ttl=settings.ttl_seconds,
            refresh_on_read=refresh_on_read,
            serde=serde,
            retry=settings.build_retry_policy(),
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_connect_timeout_seconds,
            handoff=handoff,
            handoff_timeout=handoff_timeout,
        )

    @property
    def namespace(self) -> str:
        """The store namespace (first segment of every key)."""
        return self.layout.keys.namespace

    def close(self) -> None:
        """Close the sync client's connections."""
        if self.client is not None:
            self.client.close()

    async def aclose(self) -> None:
        """Close the asyncio client's connections."""
        if self.aclient is not None:
            await self.aclient.aclose()

    def __repr__(self) -> str:
        ttl = self.layout.ttl_ms
        return f"RedisCheckpointSaver(namespace={self.namespace!r}, ttl_ms={ttl!r})"

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def _ops(self) -> Maintenance:
        # Built per call from self.serde: with_allowlist() copies replace only the serializer.
        return Maintenance(self.layout, self.serde)

    @property
    def _driver(self) -> SyncDriver:
        if self._sync is None:
            raise RuntimeError("this saver has only an asyncio client: use the async methods")
        return self._sync

    # -- sync ---------------------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint the config names (newest of its thread and namespace without a
        ``checkpoint_id``) with its values and pending writes, or None."""
        if self._behind is not None:
            return self._behind.get_tuple(self._ops, config)
        return self._driver.run(self._ops.get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first (of every thread when ``config`` is None), keeping those
        whose metadata equals ``filter`` on each of its keys, older than ``before``."""
        self._settle(None if config is None else [target(config).thread_id])
        op = self._ops.listing(config, filter=filter, before=before, limit=limit)
        return self._driver.iterate(op)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint; returns the config naming it."""
        op = self._ops.put(config, checkpoint, metadata, new_versions)
        if self._behind is None:
            return self._driver.run(op)
        t = target(config)
        cp_key = self.layout.keys.thread(t.thread_id).checkpoints(t.checkpoint_ns)
        return self._behind.hand_off(op, t.thread_id, ("HEXISTS", cp_key, checkpoint["id"]))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for the checkpoint the config names."""
        op = self._ops.put_writes(config, writes, task_id, task_path)
        if self._behind is None or not writes:
            self._driver.run(op)
            return
        t = target(config)
        key = self.layout.keys.thread(t.thread_id).writes(t.checkpoint_ns)
        first = rec.write_key(str(t.checkpoint_id), task_id, WRITES_IDX_MAP.get(writes[0][0], 0))
        probe = ("ZRANGEBYLEX", key, b"[" + first + b"|", b"(" + first + b"}", "LIMIT", 0, 1)
        self._behind.hand_off(op, t.thread_id, probe)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of a thread."""
        self._settle([str(thread_id)])
        self._driver.run(self._ops.delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints and writes the given runs made (LangGraph's warning on
        delta channels applies: this deletes what it is asked to)."""
        self._settle(None)
        self._driver.run(self._ops.delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread's whole history (every namespace, ancestor, blob and write)."""
        self._settle([str(source_thread_id), str(target_thread_id)])
        self._driver.run(self._ops.copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each checkpoint namespace's newest checkpoint, plus the
        ancestors (and their writes) its delta channels are rebuilt from; ``delete``: all."""
        self._settle([str(t) for t in thread_ids])
        self._driver.run(self._ops.prune(thread_ids, strategy))

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """LangGraph's delta-channel history of a checkpoint, in one script call (the base
        class makes a round trip per ancestor)."""
        self._settle([target(config).thread_id])
        return self._driver.run(delta_history(self._ops, config, channels))

    # -- write-behind -------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> None:
        """Write-behind: block until every hand-off of this saver is durable in Redis.

        Raises:
            FlushTimeout: naming the threads still pending after ``timeout`` seconds.
        """
        if self._behind is not None:
            self._behind.settle(None, timeout)

    def apply_handoff(self, batches: Sequence[object]) -> None:
        """Run handed-off batches (the worker task's call); each is checked first
        (:func:`~agents_persistence.langgraph.handoff.from_wire`: ValueError if refused)."""
        checked = [from_wire(b, self.layout.keys) for b in batches]
        for batch in checked:
            self._driver.execute(batch)

    def _settle(self, thread_ids: Sequence[str] | None) -> None:
        if self._behind is not None:
            self._behind.settle(thread_ids)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """LangGraph's string versions: a zero-padded counter and a random suffix, so
        diverging forks never share a (channel, version) blob."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # -- async --------------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        if self._async is None or self._behind is not None:
            return await asyncio.to_thread(self.get_tuple, config)
        return await self._async.run(self._ops.get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        if self._async is None or self._behind is not None:
            found = await asyncio.to_thread(
                lambda: [*self.list(config, filter=filter, before=before, limit=limit)]
            )
            for item in found:
                yield item
            return
        op = self._ops.listing(config, filter=filter, before=before, limit=limit)
        async for item in self._async.iterate(op):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        if self._async is None or self._behind is not None:
            return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)
        return await self._async.run(self._ops.put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        if self._async is None or self._behind is not None:
            await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)
            return
        await self._async.run(self._ops.put_writes(config, writes, task_id, task_path))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Async :meth:`get_delta_channel_history`."""
        if self._async is None or self._behind is not None:
            return await asyncio.to_thread(
                lambda: self.get_delta_channel_history(config=config, channels=channels)
            )
        return await self._async.run(delta_history(self._ops, config, channels))

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await self._arun("delete_thread", thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await self._arun("delete_for_runs", run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        await self._arun("copy_thread", source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        await self._arun("prune", thread_ids, strategy=strategy)

    async def _arun(self, name: str, *args: Any, **kwargs: Any) -> None:
        # Without an asyncio client, or in write-behind mode (which settles hand-offs first),
        # the sync method runs in a worker thread.
        if self._async is None or self._behind is not None:
            await asyncio.to_thread(getattr(self, name), *args, **kwargs)
            return
        await self._async.run(getattr(self._ops, name)(*args, **kwargs))
