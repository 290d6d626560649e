"""``get_delta_channel_history`` in one script call gives exactly what LangGraph's base class
computes with one ``get_tuple`` per ancestor (the contract's reference implementation)."""

from __future__ import annotations

import asyncio
from typing import Any

from agents_persistence.langgraph import RedisCheckpointSaver
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from tests.langgraph.conftest import Savers
from tests.langgraph.test_prune import delta_chain


def reference(saver: RedisCheckpointSaver, config: RunnableConfig, channels: list[str]) -> Any:
    return BaseCheckpointSaver.get_delta_channel_history(saver, config=config, channels=channels)


def step(
    saver: RedisCheckpointSaver,
    parent: RunnableConfig | None,
    values: dict[str, Any],
    thread_id: str = "t",
) -> RunnableConfig:
    versions: ChannelVersions = {ch: saver.get_next_version(None, None) for ch in values}
    stored_values = {ch: v for ch, v in values.items() if v is not None}
    checkpoint = generate_checkpoint(channel_values=stored_values, channel_versions=versions)
    config = generate_config(thread_id)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    return saver.put(config, checkpoint, generate_metadata(), versions)


def test_a_delta_chain_matches_the_reference(savers: Savers) -> None:
    saver = savers.make()
    chain = delta_chain(saver, "t", steps=9, snapshot_at=3)
    for config in (chain[-1], chain[5], chain[3], chain[0], generate_config("t")):
        for channels in (["ch"], ["ch", "plain"], ["plain", "missing"]):
            got = saver.get_delta_channel_history(config=config, channels=channels)
            assert got == reference(saver, config, channels), (config, channels)
    latest = saver.get_delta_channel_history(config=generate_config("t"), channels=["ch"])
    assert latest["ch"]["seed"] == _DeltaSnapshot([0, 1, 2])
    assert [w[2] for w in latest["ch"]["writes"]] == [3, 4, 5, 6, 7]


def test_channels_end_apart_and_writes_keep_task_order(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    parent = None
    for i in range(5):
        values: dict[str, Any] = {"a": _DeltaSnapshot("snap") if i == 1 else None,
                                  "b": _DeltaSnapshot("snap") if i == 3 else None}  # fmt: skip
        parent = step(saver, parent, values)
        # parallel tasks written out of order: replay follows (task_path, task_id, idx)
        saver.put_writes(parent, [("a", f"y{i}")], "task-y", task_path="~2")
        saver.put_writes(parent, [("a", f"z{i}"), ("b", i)], "task-z", task_path="~1")
    assert parent is not None
    got = saver.get_delta_channel_history(config=parent, channels=["a", "b"])
    assert got == reference(saver, parent, ["a", "b"])
    assert [w[2] for w in got["a"]["writes"]] == ["z1", "y1", "z2", "y2", "z3", "y3"]
    assert [w[2] for w in got["b"]["writes"]] == [3]


def test_a_fork_replays_only_its_own_branch(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    root = step(saver, None, {"ch": _DeltaSnapshot([])})
    saver.put_writes(root, [("ch", "root")], "t0")
    left = step(saver, root, {"ch": None})
    saver.put_writes(left, [("ch", "left")], "t1")
    right = step(saver, root, {"ch": None})
    saver.put_writes(right, [("ch", "right")], "t2")
    head = step(saver, right, {"ch": None})
    got = saver.get_delta_channel_history(config=head, channels=["ch"])
    assert got == reference(saver, head, ["ch"])
    assert [w[2] for w in got["ch"]["writes"]] == ["root", "right"]


def test_nothing_to_walk_gives_empty_histories(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    missing = generate_config("nobody")
    assert saver.get_delta_channel_history(config=missing, channels=["ch"]) == {
        "ch": {"writes": []}
    }
    assert saver.get_delta_channel_history(config=missing, channels=[]) == {}


def test_the_async_call_gives_the_same(savers: Savers) -> None:
    saver = savers.make()
    chain = delta_chain(saver, "t", steps=4, snapshot_at=1)

    async def both() -> Any:
        try:
            return await saver.aget_delta_channel_history(config=chain[-1], channels=["ch"])
        finally:
            await saver.aclose()

    assert asyncio.run(both()) == reference(saver, chain[-1], ["ch"])
