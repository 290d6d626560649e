"""The namespace's key layout: sharded for new namespaces, the single index of earlier
releases kept where it is found, and recorded in Redis so every process agrees."""

from __future__ import annotations

import fakeredis
import pytest
from agents_persistence import AgentStateSnapshot, RedisCheckpointer, StoreMisconfigured
from agents_persistence.codec import Codec
from agents_persistence.keys import DEFAULT_SHARDS, SINGLE, Keys, layout_value, parse_layout
from redis.crc import key_slot

from tests.support import SEED_JSON

pytestmark = pytest.mark.unit


def _store(server: fakeredis.FakeServer, **kwargs: object) -> RedisCheckpointer:
    return RedisCheckpointer(fakeredis.FakeRedis(server=server), namespace="ns", **kwargs)  # type: ignore[arg-type]


def test_each_shard_tag_falls_in_its_own_slice_of_the_slot_space() -> None:
    for shards in (1, 3, 16, 64):
        keys = Keys("some-namespace", shards)
        slots = [key_slot(keys.index_of(i).encode()) for i in range(shards)]
        for i, slot in enumerate(slots):
            assert i * 16384 // shards <= slot < (i + 1) * 16384 // shards
        for tid in ("a", "b:c", "{x}", "ü" * 10):  # a thread id never picks the slot
            shard = keys.shard(tid)
            assert key_slot(keys.thread(tid).encode()) == slots[shard]
            assert key_slot(keys.staging_of(shard).encode()) == slots[shard]


def test_a_thousand_threads_spread_over_the_shards() -> None:
    keys = Keys("ns")
    counts = [0] * DEFAULT_SHARDS
    for i in range(1000):
        counts[keys.shard(f"thread-{i}")] += 1
    assert min(counts) > 1000 / DEFAULT_SHARDS / 2
    assert max(counts) < 1000 / DEFAULT_SHARDS * 2


def test_layout_values_round_trip_and_unknown_ones_are_none() -> None:
    for shards in (SINGLE, 1, 16, 1024):
        assert parse_layout(layout_value(shards)) == shards
    for raw in (b"sharded:0", b"sharded:1025", b"sharded:x", b"ringed:16", b""):
        assert parse_layout(raw) is None


def test_a_new_namespace_is_sharded_and_recorded_by_its_first_write_only() -> None:
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)
    store = _store(server)
    assert store.load_state("t") is None
    assert list(store.iter_threads()) == []
    assert raw.keys("*") == []  # reads write nothing
    store.save_state("t", AgentStateSnapshot(scratchpad={"n": 1}))
    assert raw.get("ns:layout") == b"sharded:16"
    assert raw.exists(store.keys.thread("t"))
    assert store.keys.thread("t").startswith("ns:{ns:")


def test_every_process_uses_the_recorded_shard_count() -> None:
    server = fakeredis.FakeServer()
    first = _store(server, index_shards=4)
    first.save_state("t", AgentStateSnapshot(scratchpad={"n": 1}), version=5)
    second = _store(server)  # would create 16, but the namespace says 4
    assert second.load_checkpoint("t") is not None
    assert second.keys.shards == 4
    assert second.list_threads() == ["t"]


def test_a_namespace_of_the_single_index_layout_stays_readable_and_writable() -> None:
    """Data written by earlier releases (``ns:index``, ``ns:thread:<id>``) is served in
    that layout on one server: loads, listings, saves, deletes and cleanup."""
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)
    old = Codec().pack(b'{"scratchpad": {"n": 1}}', 7, 1_700_000_000_000)
    raw.set("ns:thread:old", old)
    raw.zadd("ns:index", {"old": float("inf")})
    store = _store(server)
    checkpoint = store.load_checkpoint("old")
    assert checkpoint is not None
    assert checkpoint.version == 7
    assert store.keys.shards == SINGLE
    assert store.list_threads() == ["old"]
    assert store.save_state("new", AgentStateSnapshot(scratchpad={"n": 2})).written
    assert raw.exists("ns:thread:new")
    assert raw.zscore("ns:index", "new") == float("inf")
    assert raw.get("ns:layout") == b"single"
    assert store.delete_thread("old").outcome.name == "WRITTEN"
    assert store.list_threads() == ["new"]
    assert store.count_threads() == (1, 0)
    assert store.cleanup_expired() == 0


def test_the_rust_crates_namespace_keeps_the_crates_keys() -> None:
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)
    raw.set("ns:thread:t1", SEED_JSON)
    raw.sadd("ns:threads", "t1")
    store = _store(server)
    checkpoint = store.load_checkpoint("t1")
    assert checkpoint is not None
    assert checkpoint.version == 0


def test_an_unknown_layout_is_refused_with_the_key() -> None:
    server = fakeredis.FakeServer()
    fakeredis.FakeRedis(server=server).set("ns:layout", "ringed:7")
    with pytest.raises(StoreMisconfigured, match="ns:layout"):
        _store(server).load_state("t")
