"""Write-behind: ``RedisCheckpointSaver(..., handoff=<CeleryCheckpointer>)``.

``put``/``put_writes`` go through the broker to real ``celery worker`` subprocesses, which
run ``agents_persistence.save_checkpoint``; the saver reads its own hand-offs once they are
durable. LangGraph's conformance suite passes in this mode too, and a hand-off survives the
agent process that made it.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.errors import FlushTimeout
from agents_persistence.langgraph import RedisCheckpointSaver, SaverKeys
from agents_persistence.langgraph.handoff import from_wire, to_wire
from agents_persistence.langgraph.operations import Batch
from agents_persistence.langgraph.scripts import saver_script
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.worker.app import create_app
from agents_persistence.tasks.worker.langgraph_tasks import register_langgraph_tasks
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.types import INTERRUPT

from tests.integration.conftest import Stack
from tests.langgraph.test_conformance import assert_full, run_suite

WORKER_APP = "tests.langgraph.worker_app:app"


def test_conformance_with_a_real_worker(stack: Stack) -> None:
    worker = stack.worker(app=WORKER_APP, concurrency=2)
    client = stack.client(mode="durable")

    def make() -> RedisCheckpointSaver:
        return RedisCheckpointSaver.from_settings(stack.settings, handoff=client)

    report = run_suite("RedisCheckpointSaver[write-behind, celery worker]", make)
    assert_full(report)
    assert "save_checkpoint" in worker.log_text()


def test_a_hand_off_outlives_the_agent_that_made_it(stack: Stack) -> None:
    """The agent hands off and is gone before any worker runs: nothing it got an answer for
    is lost (the broker holds it); a worker started later writes it."""
    agent = RedisCheckpointSaver.from_settings(stack.settings, handoff=stack.client())
    config = generate_config("t")
    checkpoint = generate_checkpoint(channel_values={"m": "hi"}, channel_versions={"m": 1})
    stored = agent.put(config, checkpoint, generate_metadata(), {"m": 1})
    agent.put_writes(stored, [("m", "w")], "task")
    assert stack.queued() == 2
    agent.close()  # its pending list dies with it, as in a crash
    stack.worker(app=WORKER_APP)
    stack.wait_idle()
    reader = RedisCheckpointSaver.from_settings(stack.settings)
    try:
        found = reader.get_tuple(stored)
        assert found is not None
        assert found.checkpoint["channel_values"] == {"m": "hi"}
        assert found.pending_writes == [("task", "m", "w")]
    finally:
        reader.close()


def test_eager_hand_offs_write_inline(real_redis_url: str, namespace: str) -> None:
    settings = Settings(_env_file=None, redis_url=real_redis_url, namespace=namespace, eager=True)
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    register_langgraph_tasks(app)
    client = CeleryCheckpointer(store, app, settings=settings)

    def make() -> RedisCheckpointSaver:
        return RedisCheckpointSaver.from_settings(settings, handoff=client)

    try:
        assert_full(run_suite("RedisCheckpointSaver[write-behind, eager]", make))
    finally:
        client.close()
        store.close()


def _wire(*command: Any) -> dict[str, Any]:
    return to_wire(Batch("test", [command]))


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (_wire("FLUSHALL", "x", "y"), "not one a saver hands off"),
        (_wire("HSET", "other:lg:cp:{t}:", "f", "v"), "outside the saver's namespace"),
        (_wire("EVALSHA", saver_script("drop").sha, 1, "ns:lg:thread:{t}"), "does not hand"),
        (_wire("EVAL", "return 1", 0, "x"), "not one a saver"),
        ({"commands": [["not base64!"]]}, "not base64"),
        ({"commands": "HSET"}, "list of commands"),
    ],
)
def test_workers_run_only_the_writes_a_saver_hands_off(wire: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        from_wire(wire, SaverKeys("ns"))


def test_what_a_saver_hands_off_is_admitted() -> None:
    key = "ns:lg:write:{t}:"
    sha = saver_script("put_writes").sha
    batch = from_wire(_wire("EVALSHA", sha, 1, key, b"\x00\xff", "x"), SaverKeys("ns"))
    assert batch.commands == [(b"EVALSHA", sha.encode(), b"1", key.encode(), b"\x00\xff", b"x")]
    assert base64.b64decode(_wire("ZADD", "k", 0, "m")["commands"][0][2]) == b"0"


def test_the_agent_reads_its_own_hand_offs_before_any_worker_runs(stack: Stack) -> None:
    """No worker yet: ``get_tuple`` answers from Redis plus the pending hand-offs (values
    carried over from an earlier checkpoint, pending writes, special writes replaced);
    listings wait for the workers; once a worker ran, everyone reads the same."""
    agent = RedisCheckpointSaver.from_settings(
        stack.settings, handoff=stack.client(), handoff_timeout=0.2
    )
    values = {"a": 1, "b": "kept"}
    first = agent.put(
        generate_config("t"),
        generate_checkpoint(channel_values=values, channel_versions={"a": 1, "b": 1}),
        generate_metadata(step=0),
        {"a": 1, "b": 1},
    )
    config = generate_config("t")
    config["configurable"]["checkpoint_id"] = first["configurable"]["checkpoint_id"]
    second = agent.put(
        config,
        generate_checkpoint(channel_values={**values, "a": 2}, channel_versions={"a": 2, "b": 1}),
        generate_metadata(step=1),
        {"a": 2},
    )
    agent.put_writes(second, [("a", 3), (INTERRUPT, "ask")], "task")
    agent.put_writes(second, [("a", 4), (INTERRUPT, "ask again")], "task")
    assert stack.queued() == 4
    newest = agent.get_tuple(generate_config("t"))
    assert newest is not None
    assert newest.config["configurable"] == second["configurable"]
    assert newest.checkpoint["channel_values"] == {"a": 2, "b": "kept"}
    assert sorted(map(str, (w[2] for w in newest.pending_writes or []))) == ["3", "ask again"]
    assert newest.parent_config is not None
    assert agent.get_tuple(first) is not None
    with pytest.raises(FlushTimeout):
        list(agent.list(generate_config("t")))
    stack.worker(app=WORKER_APP)
    agent.flush(timeout=30)
    reader = RedisCheckpointSaver.from_settings(stack.settings)
    try:
        assert reader.get_tuple(generate_config("t")) == agent.get_tuple(generate_config("t"))
        assert len(list(agent.list(generate_config("t")))) == 2
    finally:
        reader.close()
        agent.close()
