"""What each saver method does, written once for the sync and the async client.

Every operation is a generator that yields :class:`Batch` es (commands for one round trip,
optionally one MULTI/EXEC) and receives their replies; :mod:`.driver` runs it on a
``redis.Redis`` or a ``redis.asyncio.Redis``, each batch under the store's retry policy.
Every batch is idempotent, so a retried one (a reply lost to a dropped connection) is safe.
Listings also yield the :class:`CheckpointTuple` s they produce, as they go.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from agents_persistence.langgraph import records as rec
from agents_persistence.langgraph.keys import SaverKeys, ThreadKeys
from agents_persistence.langgraph.scripts import saver_script
from agents_persistence.validation import check_thread_id
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

__all__ = ["Batch", "Layout", "ListOp", "Op", "Operations", "Target", "target"]

T = TypeVar("T")
Reply = list[Any]
#: An operation: yields batches, receives their replies (a list per batch), returns T.
Op = Generator["Batch", Any, T]
#: A listing: yields batches (and receives their replies) and the tuples it produces.
ListOp = Generator["Batch | CheckpointTuple", Any, int]

#: Checkpoints loaded per round trip while listing.
PAGE = 100


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands sent in one round trip (in one MULTI/EXEC if ``transaction``)."""

    what: str
    commands: list[tuple[Any, ...]]
    transaction: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """The thread, checkpoint namespace and (maybe) checkpoint id a config names."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str | None


def target(config: RunnableConfig) -> Target:
    """Read a LangGraph config (the thread id must pass the core's thread id check)."""
    conf = config["configurable"]
    return Target(
        check_thread_id(str(conf["thread_id"])),
        str(conf.get("checkpoint_ns") or ""),
        get_checkpoint_id(config),
    )


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


@dataclass(frozen=True, slots=True)
class Layout:
    """What every operation needs besides the serializer.

    Attributes:
        keys: the key builder of the store namespace.
        ttl_ms: lifetime of a thread after its last write, or None.
        refresh_on_read: reads give the thread a fresh TTL too.
        single_node: one server (not a cluster): the run sets join the thread's MULTI.
    """

    keys: SaverKeys
    ttl_ms: int | None = None
    refresh_on_read: bool = False
    single_node: bool = True

    def touch(self, tk: ThreadKeys) -> tuple[Any, ...]:
        """The command giving every key of a thread a fresh TTL."""
        return ("EVALSHA", saver_script("touch").sha, 2, tk.registry, tk.runs, self.ttl_ms,
                *tk.prefixes())  # fmt: skip


class Operations:
    """The saver's operations for one serializer (LangGraph's ``serde``)."""

    def __init__(self, layout: Layout, serde: SerializerProtocol) -> None:
        self.layout = layout
        self.keys = layout.keys
        self.serde = serde

    # -- writes -----------------------------------------------------------------------------------
    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Op[RunnableConfig]:
        """Store a checkpoint, its new blobs and its run's index entries in one MULTI."""
        t = target(config)
        tk = self.keys.thread(t.thread_id)
        ns, cid = t.checkpoint_ns, checkpoint["id"]
        stored: dict[str, Any] = dict(checkpoint)
        values: dict[str, Any] = stored.pop("channel_values", None) or {}
        meta = get_serializable_checkpoint_metadata(config, metadata)
        run = meta.get("run_id")
        run_id = None if run is None else str(run)
        dumps = self.serde.dumps_typed
        record = rec.encode_record(dumps(stored), dumps(meta))
        fields = [rec.blob_field(ch, v) for ch, v in checkpoint["channel_versions"].items()]
        link = rec.encode_link(t.checkpoint_id, run_id, fields)
        blobs: list[bytes] = []
        for ch, version in new_versions.items():
            blobs.append(rec.blob_field(ch, version))
            blobs.append(rec.blob_value(dumps(values[ch]) if ch in values else None))
        commands: list[tuple[Any, ...]] = [
            ("HSET", tk.registry, ns, t.thread_id),
            ("ZADD", tk.ids(ns), 0, cid),
            ("HSET", tk.checkpoints(ns), cid, record),
            ("HSET", tk.links(ns), cid, link),
        ]
        if blobs:
            commands.append(("HSET", tk.blobs(ns), *blobs))
        run_commands: list[tuple[Any, ...]] = []
        if run_id is not None:
            commands.append(("ZADD", tk.runs, 0, rec.run_member(run_id, ns, cid)))
            run_commands.append(("SADD", self.keys.run(run_id), t.thread_id))
            if self.layout.ttl_ms is not None:
                run_commands.append(("PEXPIRE", self.keys.run(run_id), self.layout.ttl_ms))
        if self.layout.ttl_ms is not None:
            commands.append(self.layout.touch(tk))
        if self.layout.single_node:
            yield Batch("put", commands + run_commands, transaction=True)
        else:
            yield Batch("put", commands, transaction=True)
            if run_commands:
                yield Batch("put", run_commands)
        return _config(t.thread_id, ns, cid)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> Op[None]:
        """Store pending writes of a checkpoint (idempotent per task and index)."""
        t = target(config)
        if t.checkpoint_id is None:
            raise ValueError("put_writes needs a config with a checkpoint_id")
        if not writes:
            return None
        args: list[Any] = [b"" if self.layout.ttl_ms is None else self.layout.ttl_ms]
        for idx, (channel, value) in enumerate(writes):
            i = WRITES_IDX_MAP.get(channel, idx)
            args.append(rec.write_key(t.checkpoint_id, task_id, i))
            args.append(b"1" if i < 0 else b"0")
            args.append(rec.write_member(channel, self.serde.dumps_typed(value), task_path))
        key = self.keys.thread(t.thread_id).writes(t.checkpoint_ns)
        yield Batch("put_writes", [("EVALSHA", saver_script("put_writes").sha, 1, key, *args)])
        return None

    # -- reads ------------------------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> Op[CheckpointTuple | None]:
        """The checkpoint a config names, or the thread's newest in its namespace."""
        t = target(config)
        tk = self.keys.thread(t.thread_id)
        commands = [self._load(tk, t.checkpoint_ns, [t.checkpoint_id or ""])]
        if self.layout.refresh_on_read and self.layout.ttl_ms is not None:
            commands.append(self.layout.touch(tk))
        entries = (yield Batch("get_tuple", commands))[0]
        if not entries:
            return None
        return self.tuple(t.thread_id, t.checkpoint_ns, entries[0])

    def listing(
        self,
        config: RunnableConfig | None,
        *,
        filter: Mapping[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> ListOp:
        """Checkpoints newest first: of one thread (one namespace if the config names one),
        or of every thread (a SCAN of the registries) when ``config`` is None."""
        before_id = get_checkpoint_id(before) if before else None
        left = limit
        if config is not None:
            t = target(config)
            namespaces = (
                None if "checkpoint_ns" not in config["configurable"] else [t.checkpoint_ns]
            )
            return (yield from self._list_thread(
                t.thread_id, namespaces=namespaces, checkpoint_id=t.checkpoint_id,
                filter=filter, before_id=before_id, limit=left,
            ))  # fmt: skip
        cursor, total = 0, 0
        while left is None or left > 0:
            reply = yield Batch(
                "list", [("SCAN", cursor, "MATCH", self.keys.registry_pattern, "COUNT", 500)]
            )
            cursor, found = reply[0]
            for key in found:
                registry = yield Batch("list", [("HGETALL", key)])
                thread_ids = {v.decode() for v in registry[0].values()}
                for thread_id in sorted(thread_ids):
                    n = yield from self._list_thread(
                        thread_id, namespaces=None, checkpoint_id=None, filter=filter,
                        before_id=before_id, limit=left,
                    )  # fmt: skip
                    total += n
                    left = None if left is None else left - n
                    if left is not None and left <= 0:
                        return total
            if int(cursor) == 0:
                break
        return total

    def _list_thread(
        self,
        thread_id: str,
        *,
        namespaces: list[str] | None,
        checkpoint_id: str | None,
        filter: Mapping[str, Any] | None,
        before_id: str | None,
        limit: int | None,
    ) -> ListOp:
        if limit is not None and limit <= 0:
            return 0
        tk = self.keys.thread(thread_id)
        if namespaces is None:
            reply = yield Batch("list", [("HKEYS", tk.registry)])
            namespaces = sorted(k.decode() for k in reply[0])
        if not namespaces:
            return 0
        if checkpoint_id is not None:
            ids = [[checkpoint_id] if before_id is None or checkpoint_id < before_id else []
                   for _ in namespaces]  # fmt: skip
        else:
            top = b"(" + before_id.encode() if before_id else b"+"
            page = ("LIMIT", 0, limit) if limit is not None and not filter else ()
            reply = yield Batch(
                "list", [("ZREVRANGEBYLEX", tk.ids(ns), top, b"-", *page) for ns in namespaces]
            )
            ids = [[i.decode() for i in found] for found in reply]
        merged = list(heapq.merge(
            *([(cid, ns) for cid in found] for ns, found in zip(namespaces, ids, strict=True)),
            reverse=True,
        ))  # fmt: skip
        count = 0
        if self.layout.refresh_on_read and self.layout.ttl_ms is not None and merged:
            yield Batch("list", [self.layout.touch(tk)])
        for start in range(0, len(merged), PAGE):
            chunk = merged[start : start + PAGE]
            if filter:
                chunk = yield from self._matching(tk, chunk, filter)
            by_ns: dict[str, list[str]] = {}
            for cid, ns in chunk:
                by_ns.setdefault(ns, []).append(cid)
            order = list(by_ns)
            reply = yield Batch("list", [self._load(tk, ns, by_ns[ns]) for ns in order])
            loaded = {
                (entry[0].decode(), ns): entry
                for ns, entries in zip(order, reply, strict=True)
                for entry in entries
            }
            for cid, ns in chunk:
                entry = loaded.get((cid, ns))
                if entry is None:  # deleted since its id was listed
                    continue
                yield self.tuple(thread_id, ns, entry)
                count += 1
                if limit is not None and count >= limit:
                    return count
        return count

    def _matching(
        self,
        tk: ThreadKeys,
        chunk: list[tuple[str, str]],
        filter: Mapping[str, Any],
    ) -> Op[list[tuple[str, str]]]:
        reply = yield Batch("list", [("HGET", tk.checkpoints(ns), cid) for cid, ns in chunk])
        kept = []
        for (cid, ns), record in zip(chunk, reply, strict=True):
            if record is None:
                continue
            _, meta = rec.decode_record(record)
            metadata = self.serde.loads_typed(meta)
            if all(metadata.get(k) == v for k, v in filter.items()):
                kept.append((cid, ns))
        return kept

    def load_command(self, tk: ThreadKeys, ns: str, ids: Sequence[str]) -> tuple[Any, ...]:
        """The ``load.lua`` call for ``ids`` of one namespace ([""]: the newest)."""
        return self._load(tk, ns, ids)

    def _load(self, tk: ThreadKeys, ns: str, ids: Sequence[str]) -> tuple[Any, ...]:
        return ("EVALSHA", saver_script("load").sha, 5, *tk.namespace_keys(ns), *ids)

    def tuple(self, thread_id: str, checkpoint_ns: str, entry: Sequence[Any]) -> CheckpointTuple:
        """Build a :class:`CheckpointTuple` from one entry of ``load.lua``."""
        raw_id, record, raw_link, flat_blobs, members = entry
        checkpoint_id = raw_id.decode()
        typed_checkpoint, typed_metadata = rec.decode_record(record)
        link = rec.decode_link(raw_link)
        loads = self.serde.loads_typed
        values: dict[str, Any] = {}
        for i in range(0, len(flat_blobs), 2):
            channel, typed = rec.decode_blob(flat_blobs[i], flat_blobs[i + 1])
            if typed is not None:
                values[channel] = loads(typed)
        checkpoint = cast(Checkpoint, {**loads(typed_checkpoint), "channel_values": values})
        writes = sorted((rec.decode_write(m) for m in members), key=lambda w: w.sort_key)
        return CheckpointTuple(
            config=_config(thread_id, checkpoint_ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=loads(typed_metadata),
            parent_config=(
                _config(thread_id, checkpoint_ns, link.parent) if link.parent else None
            ),
            pending_writes=[(w.task_id, w.channel, loads(w.value)) for w in writes],
        )
