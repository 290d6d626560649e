"""Keep-latest prune and LangGraph's delta channels (``DeltaChannel``, beta in LangGraph 1.x).

A delta channel stores its value only every so many steps (a ``_DeltaSnapshot`` blob); in
between, the checkpoint has a version of the channel but no value, and LangGraph rebuilds
it from the nearest ancestor's snapshot plus the writes of the ancestors after it
(``get_delta_channel_history``). A prune that kept only the newest checkpoint would make such
a channel silently rebuild as empty; ours keeps what the newest one needs. The chains below
are built the way LangGraph's checkpoint loop writes them, metadata counters included.
"""

from __future__ import annotations

from typing import Any

import pytest
from agents_persistence.langgraph import RedisCheckpointSaver, SaverKeys
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from tests.langgraph.conftest import Savers


def delta_chain(
    saver: RedisCheckpointSaver,
    thread_id: str,
    *,
    steps: int,
    snapshot_at: int,
    ns: str = "",
    counters: bool = True,
) -> list[RunnableConfig]:
    """``steps`` checkpoints; channel ``ch`` is a delta channel written at every step and
    snapshotted at ``snapshot_at``; ``plain`` is an ordinary channel."""
    configs: list[RunnableConfig] = []
    version: str | None = None
    for step in range(steps):
        version = saver.get_next_version(version, None)
        values: dict[str, Any] = {"plain": step}
        if step == snapshot_at:
            values["ch"] = _DeltaSnapshot(list(range(step)))
        versions: ChannelVersions = {"ch": version, "plain": version}
        checkpoint = generate_checkpoint(channel_values=values, channel_versions=versions)
        extra: dict[str, Any] = {}
        if counters:
            since = step - snapshot_at if step >= snapshot_at else step + 1
            extra["counters_since_delta_snapshot"] = {"ch": [since, since]}
        config = generate_config(thread_id, checkpoint_ns=ns)
        if configs:
            config["configurable"]["checkpoint_id"] = configs[-1]["configurable"]["checkpoint_id"]
        stored = saver.put(config, checkpoint, generate_metadata(step=step, **extra), versions)
        saver.put_writes(stored, [("ch", step), ("plain", step + 1)], f"task-{step}")
        configs.append(stored)
    return configs


def ids(saver: RedisCheckpointSaver, thread_id: str, ns: str = "") -> list[str]:
    found = saver.list(generate_config(thread_id, checkpoint_ns=ns))
    return [t.checkpoint["id"] for t in found]


def history(saver: RedisCheckpointSaver, head: RunnableConfig) -> Any:
    return saver.get_delta_channel_history(config=head, channels=["ch"])


def test_keep_latest_keeps_the_chain_back_to_the_snapshot(savers: Savers) -> None:
    saver = savers.make()
    chain = delta_chain(saver, "t", steps=8, snapshot_at=2)
    before = history(saver, chain[-1])
    assert before["ch"]["seed"] == _DeltaSnapshot([0, 1])
    assert [w[2] for w in before["ch"]["writes"]] == [2, 3, 4, 5, 6]
    all_ids = ids(saver, "t")

    saver.prune(["t"], strategy="keep_latest")

    assert ids(saver, "t") == all_ids[:6]  # the head and its ancestors back to step 2
    assert history(saver, chain[-1]) == before
    head = saver.get_tuple(generate_config("t"))
    assert head is not None
    assert head.checkpoint["channel_values"] == {"plain": 7}
    assert [w[2] for w in head.pending_writes or []] == [7, 8]
    blobs = SaverKeys(savers.namespace).thread("t").blobs("")
    assert savers.raw.hlen(blobs) == 2 * 6  # the blobs of steps 0 and 1 are gone


def test_without_delta_channels_only_the_newest_checkpoint_stays(savers: Savers) -> None:
    """The same chain without LangGraph's delta counters: nothing marks ``ch`` as rebuilt
    from ancestors, so keep-latest keeps one checkpoint (and the history is lost: the
    retention above is what saves it)."""
    saver = savers.make()
    chain = delta_chain(saver, "t", steps=8, snapshot_at=2, counters=False)
    saver.prune(["t"], strategy="keep_latest")
    assert ids(saver, "t") == [chain[-1]["configurable"]["checkpoint_id"]]
    assert "seed" not in history(saver, chain[-1])["ch"]


def test_each_namespace_keeps_what_its_own_head_needs(savers: Savers) -> None:
    saver = savers.make()
    root = delta_chain(saver, "t", steps=5, snapshot_at=4)  # the head holds the snapshot
    child = delta_chain(saver, "t", steps=5, snapshot_at=1, ns="child:1")
    saver.prune(["t"], strategy="keep_latest")
    assert ids(saver, "t") == [root[-1]["configurable"]["checkpoint_id"]]
    assert ids(saver, "t", "child:1") == [
        c["configurable"]["checkpoint_id"] for c in reversed(child[1:])
    ]


def test_a_delta_channel_never_snapshotted_keeps_the_whole_chain(savers: Savers) -> None:
    saver = savers.make()
    chain = delta_chain(saver, "t", steps=4, snapshot_at=99)
    before = history(saver, chain[-1])
    saver.prune(["t"], strategy="keep_latest")
    assert len(ids(saver, "t")) == 4
    assert history(saver, chain[-1]) == before


def test_prune_delete_removes_every_key_of_the_thread(savers: Savers) -> None:
    saver = savers.make()
    delta_chain(saver, "t", steps=3, snapshot_at=0)
    saver.prune(["t"], strategy="delete")
    assert savers.stored_keys() == []


def test_an_unknown_strategy_is_refused(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    with pytest.raises(ValueError, match="keep_latest"):
        saver.prune(["t"], strategy="keep_some")
