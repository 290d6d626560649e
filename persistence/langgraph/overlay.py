"""Write-behind reads without waiting: ``get_tuple`` over Redis plus this process's pending
hand-offs.

The saver's data model is additive (a checkpoint, a blob, a write is added, never changed;
only LangGraph's special writes replace one of the same task and index), so the union of what
Redis holds and what this process handed off is exactly the state the worker fleet converges
to, whether or not a hand-off has landed yet. The pending batches are read back here (they
are the saver's own commands, on the thread's own keys).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents_persistence.langgraph import records as rec
from agents_persistence.langgraph.keys import ThreadKeys
from agents_persistence.langgraph.operations import Batch, Op, Operations, target
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple

__all__ = ["Pending", "get_tuple_overlaid"]


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


@dataclass
class Pending:
    """What pending batches add to one (thread, checkpoint namespace)."""

    records: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    writes: dict[bytes, bytes] = field(default_factory=dict)  # write key -> member

    @classmethod
    def of(cls, batches: Sequence[Batch], tk: ThreadKeys, ns: str) -> Pending:
        """Collect the writes of ``batches`` on namespace ``ns`` of a thread."""
        view = cls()
        cp, link, blob, write = (tk.checkpoints(ns), tk.links(ns), tk.blobs(ns), tk.writes(ns))
        for batch in batches:
            for command in batch.commands:
                name, key = command[0], command[1] if len(command) > 1 else None
                if name == "HSET" and key in (cp, link, blob):
                    pairs = dict(zip(command[2::2], command[3::2], strict=True))
                    if key == cp:
                        view.records.update({str(k): _b(v) for k, v in pairs.items()})
                    elif key == link:
                        view.links.update({str(k): _b(v) for k, v in pairs.items()})
                    else:
                        view.blobs.update({_b(k): _b(v) for k, v in pairs.items()})
                elif name == "EVALSHA" and len(command) > 3 and command[3] == write:
                    args = command[5:]
                    for i in range(0, len(args), 3):
                        wkey, replace, payload = _b(args[i]), args[i + 1], _b(args[i + 2])
                        if replace == b"1" or wkey not in view.writes:
                            view.writes[wkey] = wkey + b"|" + payload
        return view


def _write_key(member: bytes) -> bytes:
    _, pos = rec.split(member, 3)
    return member[:pos]


def get_tuple_overlaid(
    ops: Operations, config: RunnableConfig, batches: Sequence[Batch]
) -> Op[CheckpointTuple | None]:
    """:meth:`Operations.get_tuple` over Redis and ``batches`` (this process's pending
    hand-offs of the thread): at most three round trips, no waiting on workers."""
    t = target(config)
    tk = ops.keys.thread(t.thread_id)
    ns = t.checkpoint_ns
    view = Pending.of(batches, tk, ns)
    wanted = t.checkpoint_id or ""
    reply = yield Batch("get_tuple", [ops.load_command(tk, ns, [wanted])])
    entry: list[Any] | None = list(reply[0][0]) if reply[0] else None
    if not wanted:
        newest = max(view.records, default="")
        if entry is None or newest > entry[0].decode():
            wanted = newest
            if entry is not None:
                reply = yield Batch("get_tuple", [ops.load_command(tk, ns, [wanted])])
                entry = list(reply[0][0]) if reply[0] else None
    cid = entry[0].decode() if entry is not None else wanted
    record = entry[1] if entry is not None else view.records.get(cid)
    link = entry[2] if entry is not None else view.links.get(cid)
    if record is None or link is None:
        return None
    blobs: dict[bytes, bytes] = {}
    if entry is not None:
        flat = entry[3]
        blobs.update(zip(flat[0::2], flat[1::2], strict=True))
    fields = rec.decode_link(link).fields
    blobs.update({f: view.blobs[f] for f in fields if f in view.blobs})
    missing = [f for f in fields if f not in blobs]
    if missing:
        values = yield from _hmget(tk.blobs(ns), missing)
        blobs.update({f: v for f, v in zip(missing, values, strict=True) if v is not None})
    members = {_write_key(m): m for m in (entry[4] if entry is not None else [])}
    prefix = rec.netstring(cid)
    for key, member in view.writes.items():
        if key.startswith(prefix):
            members[key] = member
    flat_blobs = [x for pair in blobs.items() for x in pair]
    merged = [cid.encode(), record, link, flat_blobs, list(members.values())]
    return ops.tuple(t.thread_id, ns, merged)


def _hmget(key: str, fields: list[bytes]) -> Generator[Batch, Any, list[Any]]:
    reply = yield Batch("get_tuple", [("HMGET", key, *fields)])
    values: list[Any] = reply[0]
    return values
