"""``get_delta_channel_history`` in one script call (LangGraph's ``DeltaChannel``, beta).

LangGraph rebuilds a delta channel from the nearest ancestor that stores its value (the seed)
and the writes of the ancestors after it. The base class walks the parent chain with one
``get_tuple`` per ancestor (each loading every value and write of that checkpoint), up to the
channel's snapshot frequency (1,000 by default) round trips; ``history.lua`` walks the chain
inside Redis and returns only the requested channels' writes and seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents_persistence.langgraph import records as rec
from agents_persistence.langgraph.operations import Batch, Op, Operations, target
from agents_persistence.langgraph.scripts import saver_script
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import DeltaChannelHistory, PendingWrite

__all__ = ["delta_history"]


def delta_history(
    ops: Operations, config: RunnableConfig, channels: Sequence[str]
) -> Op[dict[str, DeltaChannelHistory]]:
    """Per channel: the on-path writes oldest first (each checkpoint's in LangGraph's
    ``writes_sort_key`` order) and the seed, if an ancestor stores a value."""
    if not channels:
        return {}
    t = target(config)
    tk = ops.keys.thread(t.thread_id)
    ns = t.checkpoint_ns
    command = (
        "EVALSHA", saver_script("history").sha, 4, tk.ids(ns), tk.links(ns), tk.blobs(ns),
        tk.writes(ns), t.checkpoint_id or "", *channels,
    )  # fmt: skip
    reply = (yield Batch("delta_history", [command]))[0]
    walked = [cid.decode() for cid in reply[0]]
    loads = ops.serde.loads_typed
    result: dict[str, DeltaChannelHistory] = {}
    for i, channel in enumerate(channels):
        seed, members = reply[1 + 2 * i], reply[2 + 2 * i]
        by_checkpoint: dict[str, list[rec.Write]] = {}
        for member in members:
            write = rec.decode_write(member)
            by_checkpoint.setdefault(write.checkpoint_id, []).append(write)
        writes: list[PendingWrite] = []
        for cid in reversed(walked):
            for w in sorted(by_checkpoint.get(cid, ()), key=lambda w: w.sort_key):
                writes.append((w.task_id, w.channel, loads(w.value)))
        entry: DeltaChannelHistory = {"writes": writes}
        typed = rec.decode_blob_value(seed) if seed else None
        if typed is not None:
            entry["seed"] = loads(typed)
        result[channel] = entry
    return result
