"""The saver's own promises beyond the conformance suite: key layout (one slot per thread,
namespaces), TTL and refresh on read, listings across threads and namespaces, LangGraph's
serializer and allow-list, construction, and errors."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import fakeredis
import pytest
import redis
from agents_persistence import StoreMisconfigured, StoreUnavailable
from agents_persistence.langgraph import RedisCheckpointSaver, SaverKeys
from agents_persistence.langgraph.keys import hash_tag
from agents_persistence.retry import RetryPolicy
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import INTERRUPT
from redis.crc import key_slot

from tests.langgraph.conftest import Savers


@dataclasses.dataclass
class Note:
    """A type LangGraph's strict serializer refuses unless allow-listed."""

    text: str


def put(
    saver: RedisCheckpointSaver,
    thread_id: str,
    *,
    ns: str = "",
    parent: RunnableConfig | None = None,
    values: dict[str, Any] | None = None,
    **metadata: Any,
) -> RunnableConfig:
    """Put a checkpoint (values stored as new blobs at version 1) on top of ``parent``."""
    config = generate_config(thread_id, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    versions: ChannelVersions = dict.fromkeys(values or {}, 1)
    checkpoint = generate_checkpoint(channel_values=values, channel_versions=versions)
    return saver.put(config, checkpoint, generate_metadata(**metadata), versions)


def test_every_key_of_a_thread_is_in_its_slot_and_namespace(savers: Savers) -> None:
    saver = savers.make(ttl=600)
    first = put(saver, "thread-1", values={"a": 1}, run_id="run-1")
    put(saver, "thread-1", parent=first, values={"a": 2}, run_id="run-1")
    child = put(saver, "thread-1", ns="child:1", values={"b": [1]}, run_id="run-1")
    saver.put_writes(child, [("b", 2)], "task-1")
    saver.put_writes(first, [("a", 3)], "task-2")
    keys = [k.decode() for k in savers.stored_keys()]
    run_key = SaverKeys(savers.namespace).run("run-1")
    assert run_key in keys
    thread_keys = [k for k in keys if k != run_key]
    # registry, runs, and the five keys of each of the two checkpoint namespaces
    assert len(thread_keys) == 2 + 5 * 2
    assert {key_slot(k.encode()) for k in thread_keys} == {key_slot(b"{thread-1}")}
    assert all(k.startswith(f"{savers.namespace}:lg:") for k in keys)


@pytest.mark.parametrize("thread_id", ["plain", "with}brace", "#starts-with-hash", "a{b"])
def test_any_thread_id_gets_a_one_slot_tag_of_its_own(thread_id: str) -> None:
    tag = hash_tag(thread_id)
    assert tag.startswith("{")
    assert tag.endswith("}")
    assert "}" not in tag[1:-1]
    assert len(tag) > 2
    others = {hash_tag(t) for t in ["plain", "with}brace", "#starts-with-hash", "a{b"]}
    assert len(others) == 4
    assert hash_tag("#" + "0" * 64) != hash_tag("0" * 64)


def test_braced_thread_ids_round_trip_apart(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    for tid in ["x}y", "x", "#x"]:
        put(saver, tid, values={"who": tid})
    for tid in ["x}y", "x", "#x"]:
        found = saver.get_tuple(generate_config(tid))
        assert found is not None
        assert found.checkpoint["channel_values"] == {"who": tid}


def test_ttl_is_on_every_key_and_reads_can_refresh_it(savers: Savers) -> None:
    saver = savers.make(ttl=600)
    stored = put(saver, "t", values={"a": 1}, run_id="r")
    saver.put_writes(stored, [("a", 2)], "task")
    keys = savers.stored_keys()
    ttls = [savers.raw.pttl(k) for k in keys]
    assert all(0 < t <= 600_000 for t in ttls), ttls
    for key in keys:
        savers.raw.pexpire(key, 50_000)
    saver.get_tuple(stored)  # no refresh on read: nothing changes
    assert all(savers.raw.pttl(k) <= 50_000 for k in keys)
    reader = savers.make(ttl=600, refresh_on_read=True)
    reader.get_tuple(stored)
    run_key = SaverKeys(savers.namespace).run("r").encode()
    refreshed = {k: savers.raw.pttl(k) for k in keys if k != run_key}
    assert all(t > 50_000 for t in refreshed.values()), refreshed


def test_without_ttl_nothing_expires(savers: Savers) -> None:
    saver = savers.make()
    put(saver, "t", values={"a": 1}, run_id="r")
    assert {savers.raw.pttl(k) for k in savers.stored_keys()} == {-1}


def test_delete_thread_leaves_no_key_and_spares_other_threads(savers: Savers) -> None:
    saver = savers.make()
    for tid in ["gone", "kept"]:
        first = put(saver, tid, values={"a": 1}, run_id="shared-run")
        child = put(saver, tid, ns="child:1", parent=None, values={"b": 1}, run_id="shared-run")
        saver.put_writes(first, [("a", 2)], "task")
        saver.put_writes(child, [("b", 2)], "task")
    before = savers.stored_keys()
    saver.delete_thread("gone")
    after = savers.stored_keys()
    gone_slot = key_slot(b"{gone}")
    assert not [k for k in after if key_slot(k) == gone_slot]
    assert [k for k in before if key_slot(k) != gone_slot] == after
    run_key = SaverKeys(savers.namespace).run("shared-run")
    assert savers.raw.smembers(run_key) == {b"kept"}
    assert saver.get_tuple(generate_config("kept")) is not None


def test_delete_for_runs_reaches_copies_and_drops_unread_blobs(savers: Savers) -> None:
    saver = savers.make()
    first = put(saver, "src", values={"a": "old"}, run_id="r1")
    put(saver, "src", parent=first, values={"a": "new"}, run_id="r2")
    saver.copy_thread("src", "dst")
    saver.delete_for_runs(["r1"])
    for tid in ["src", "dst"]:
        left = list(saver.list(generate_config(tid)))
        assert [t.metadata["run_id"] for t in left] == ["r2"]
        assert left[0].checkpoint["channel_values"] == {"a": "new"}
        blobs = SaverKeys(savers.namespace).thread(tid).blobs("")
        assert savers.raw.hlen(blobs) == 1  # the blob only r1's checkpoint read is gone
    assert not savers.raw.exists(SaverKeys(savers.namespace).run("r1"))


def test_listing_merges_namespaces_and_threads_newest_first(savers: Savers) -> None:
    saver = savers.make()
    a1 = put(saver, "a", source="input", step=1)
    c1 = put(saver, "a", ns="child:1", source="loop", step=1)
    a2 = put(saver, "a", parent=a1, source="loop", step=2)
    b1 = put(saver, "b", source="loop", step=1)
    ids = [c["configurable"]["checkpoint_id"] for c in (a1, c1, a2, b1)]
    everything: RunnableConfig = {"configurable": {"thread_id": "a"}}
    assert [t.checkpoint["id"] for t in saver.list(everything)] == [ids[2], ids[1], ids[0]]
    assert [t.config["configurable"]["checkpoint_ns"] for t in saver.list(everything)] == [
        "",
        "child:1",
        "",
    ]
    assert [t.checkpoint["id"] for t in saver.list(everything, filter={"source": "loop"})] == [
        ids[2],
        ids[1],
    ]
    assert [t.checkpoint["id"] for t in saver.list(everything, before=a2, limit=1)] == [ids[1]]
    assert sorted(t.checkpoint["id"] for t in saver.list(None)) == sorted(ids)
    assert [t.checkpoint["id"] for t in saver.list(None, filter={"step": 2})] == [ids[2]]
    assert len(list(saver.list(None, limit=2))) == 2


def test_special_writes_replace_and_ordinary_ones_do_not(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    stored = put(saver, "t")
    saver.put_writes(stored, [("ch", "first"), (INTERRUPT, "ask")], "task")
    saver.put_writes(stored, [("ch", "second"), (INTERRUPT, "ask again")], "task")
    found = saver.get_tuple(stored)
    assert found is not None
    assert sorted(w[2] for w in found.pending_writes or []) == ["ask again", "first"]


def test_the_serializer_allow_list_applies_and_copies_widen_it(fake_savers: Savers) -> None:
    strict = fake_savers.make(serde=JsonPlusSerializer(allowed_msgpack_modules=None))
    stored = put(strict, "t", values={"note": Note("hi")})
    found = strict.get_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"]["note"] == {"text": "hi"}  # refused: plain dict
    widened = strict.with_allowlist([(__name__, "Note")])
    assert widened is not strict
    assert widened.serde is not strict.serde
    again = widened.get_tuple(stored)
    assert again is not None
    assert again.checkpoint["channel_values"]["note"] == Note("hi")
    assert strict.get_tuple(stored) == found  # the original keeps its own list


def test_sync_and_async_clients_see_one_store(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    stored = put(saver, "t", values={"a": 1})

    async def read() -> Any:
        try:
            return await saver.aget_tuple(stored)
        finally:
            await saver.aclose()

    found = asyncio.run(read())
    assert found is not None
    assert found.checkpoint["channel_values"] == {"a": 1}
    only_async = fake_savers.make(sync=False)
    with pytest.raises(RuntimeError, match="async"):
        only_async.get_tuple(stored)


def test_versions_are_strings_that_grow() -> None:
    saver = RedisCheckpointSaver(fakeredis.FakeRedis())
    first = saver.get_next_version(None, None)
    second = saver.get_next_version(first, None)
    assert first < second
    assert int(second.split(".")[0]) == 2
    assert saver.get_next_version(7, None).startswith("0" * 31 + "8.")  # type: ignore[arg-type]


def test_construction_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="client"):
        RedisCheckpointSaver()
    with pytest.raises(ValueError, match="decode_responses"):
        RedisCheckpointSaver(fakeredis.FakeRedis(decode_responses=True))
    with pytest.raises(ValueError, match="namespace"):
        RedisCheckpointSaver(fakeredis.FakeRedis(), namespace="bad:ns")
    with pytest.raises(ValueError, match="ttl"):
        RedisCheckpointSaver(fakeredis.FakeRedis(), ttl=-1)


def test_a_key_of_another_type_is_a_misconfiguration(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    fake_savers.raw.set(SaverKeys(fake_savers.namespace).thread("t").registry, b"x")
    with pytest.raises(StoreMisconfigured):
        put(saver, "t")


def test_lost_scripts_are_loaded_again(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    stored = put(saver, "t", values={"a": 1})
    fake_savers.raw.script_flush()
    assert saver.get_tuple(stored) is not None


def test_an_unreachable_store_is_unavailable() -> None:
    saver = RedisCheckpointSaver.from_url(
        "redis://127.0.0.1:1/0", retry=RetryPolicy(attempts=1, initial_backoff=0.01)
    )
    try:
        with pytest.raises(StoreUnavailable) as caught:
            saver.get_tuple(generate_config("t"))
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
    finally:
        saver.close()


def test_separators_in_names_are_just_bytes(fake_savers: Savers) -> None:
    saver = fake_savers.make()
    ns = "parent:1|child:2"
    values = {"a:b|c": "x", "é 10:": b"\x00\xff", "": None}
    stored = put(saver, "t:1|2", ns=ns, values=values)
    saver.put_writes(stored, [("a:b|c", "w"), ("é 10:", 1)], "task:1|x", task_path="~p:1")
    found = saver.get_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == values
    assert found.config["configurable"] == stored["configurable"]
    assert [(w[1], w[2]) for w in found.pending_writes or []] == [("a:b|c", "w"), ("é 10:", 1)]
