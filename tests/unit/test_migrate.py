"""Migration of a namespace from the single-index layout (earlier releases, the Rust crate)
to the sharded one: moved whole (TTL, tombstones, versions), resumable after an
interruption at any batch, idempotent, never regressing a version, and served by stores of
both layouts while it runs."""

from __future__ import annotations

import asyncio
import json

import fakeredis
import pytest
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    CorruptState,
    MigrationReport,
    RedisCheckpointer,
    StoreMisconfigured,
    migrate_namespace,
)
from agents_persistence.checkpoint import WriteOutcome
from agents_persistence.keys import SINGLE, Keys

from tests.support import SEED_JSON

pytestmark = pytest.mark.unit

NS = "ns"
TTL = 3600.0


class Interrupted(Exception):
    """Stands for the migration process being killed."""


def _client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def _store(server: fakeredis.FakeServer, **kwargs: object) -> RedisCheckpointer:
    return RedisCheckpointer(_client(server), namespace=NS, **kwargs)  # type: ignore[arg-type]


def _state(n: int) -> AgentStateSnapshot:
    return AgentStateSnapshot(scratchpad={"n": n})


def _plant(server: fakeredis.FakeServer) -> dict[str, int | None]:
    """A namespace of the single-index layout: 30 threads of this library (half with a TTL),
    2 deleted (tombstones), 3 of the Rust crate (one with a TTL); each live thread's
    version (None: deleted; 0: the crate's)."""
    old = _store(server, index_shards=SINGLE)
    expiring = _store(server, index_shards=SINGLE, ttl=TTL)
    expected: dict[str, int | None] = {}
    for i in range(30):
        (expiring if i % 2 else old).save_state(f"t{i}", _state(i), version=100 + i)
        expected[f"t{i}"] = 100 + i
    for i in (4, 7):
        old.delete_thread(f"t{i}")
        expected[f"t{i}"] = None
    raw = _client(server)
    for i in range(3):
        raw.set(f"{NS}:thread:crate{i}", SEED_JSON, ex=int(TTL) if i == 0 else None)
        raw.sadd(f"{NS}:threads", f"crate{i}")
        expected[f"crate{i}"] = 0
    assert raw.get(f"{NS}:layout") == b"single"
    return expected


def _ttls(server: fakeredis.FakeServer, keys: Keys, ids: list[str]) -> dict[str, int]:
    raw = _client(server)
    return {tid: int(raw.pttl(keys.thread(tid))) for tid in ids}


def _check_migrated(server: fakeredis.FakeServer, expected: dict[str, int | None]) -> None:
    """Every thread at its version (deleted ones still deleted), listing exact, nothing of
    the single layout left."""
    raw = _client(server)
    assert raw.get(f"{NS}:layout") == b"sharded:16"
    leftovers = [k for k in raw.scan_iter(match=f"{NS}:*") if not k.startswith(b"ns:{")]
    assert leftovers == [b"ns:layout"]
    store = _store(server)
    for tid, version in expected.items():
        checkpoint = store.load_checkpoint(tid)
        if version is None:
            assert checkpoint is None, tid
            assert store.stored_versions([tid])[tid] > 0  # the tombstone came along
        else:
            assert checkpoint is not None, tid
            assert checkpoint.version == version
    live = sorted(tid for tid, v in expected.items() if v is not None)
    assert sorted(store.iter_threads(page_size=7)) == live


def test_a_namespace_of_both_old_writers_moves_whole_with_its_ttls_and_tombstones() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    single = Keys(NS, SINGLE)
    before = _ttls(server, single, list(expected))
    report = migrate_namespace(_client(server), NS, batch=4)
    assert report.finished
    assert report.state == "single"
    assert (report.moved, report.already_newer, report.corrupt) == (33, 0, 0)
    assert (report.tombstones, report.crate, report.skipped) == (2, 3, 0)
    _check_migrated(server, expected)
    after = _ttls(server, Keys(NS), list(expected))
    for tid, ttl in before.items():
        if ttl < 0:
            assert after[tid] == ttl, tid  # no TTL stays none
        else:
            assert 0 < ttl - after[tid] < 5_000, tid  # the same expiry, not a fresh one
    # The crate's record with a TTL is listed until it expires: its score is its expiry.
    store = _store(server)
    score = _client(server).zscore(store.keys.index_of(store.keys.shard("crate0")), "crate0")
    assert score is not None
    assert score != float("inf")


def test_a_second_run_moves_nothing() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    migrate_namespace(_client(server), NS)
    again = migrate_namespace(_client(server), NS)
    assert again.state == "sharded"
    assert again.finished
    assert (again.moved, again.already_newer, again.batches) == (0, 0, 0)
    _check_migrated(server, expected)


def test_a_run_killed_after_any_batch_resumes_and_ends_the_same() -> None:
    """For every batch of a full run: the process dies right after it (the first: right
    after the layout went to migrating; the last: before the flip). Meanwhile the namespace
    is served whole; a second run finishes it, counting every record once."""
    reference = fakeredis.FakeServer()
    _plant(reference)
    total = migrate_namespace(_client(reference), NS, batch=4).batches
    assert total > 10
    for kill_after in range(total):
        server = fakeredis.FakeServer()
        expected = _plant(server)
        _interrupted(server, kill_after)
        raw = _client(server)
        assert raw.get(f"{NS}:layout") == b"migrating:16"
        assert raw.exists(f"{NS}:migration")
        # Every thread loads; the listing holds every thread of the old index (the crate's
        # threads, in its set only, join it as they move), none twice.
        store = _store(server)
        listed = list(store.iter_threads(page_size=6))
        assert len(listed) == len(set(listed))
        live = {t for t, v in expected.items() if v is not None}
        assert live - {"crate0", "crate1", "crate2"} <= set(listed) <= live
        for tid, version in expected.items():
            checkpoint = store.load_checkpoint(tid)
            assert (checkpoint.version if checkpoint else None) == version, (kill_after, tid)
        report = migrate_namespace(_client(server), NS, batch=4)
        assert report.state == "migrating"
        assert report.finished
        assert report.moved + report.already_newer == 33, kill_after
        _check_migrated(server, expected)


def test_the_layout_went_to_migrating_before_the_first_batch_only() -> None:
    server = fakeredis.FakeServer()
    _plant(server)
    seen: list[bytes | str | None] = []
    raw = _client(server)
    migrate_namespace(raw, NS, batch=10, on_batch=lambda _: seen.append(raw.get("ns:layout")))
    assert seen
    assert set(seen) == {b"migrating:16"}
    assert raw.get("ns:layout") == b"sharded:16"


def _interrupted(server: fakeredis.FakeServer, batches: int) -> None:
    done = 0

    def die(report: MigrationReport) -> None:
        nonlocal done
        done += 1
        if done > batches:
            raise Interrupted

    with pytest.raises(Interrupted):
        migrate_namespace(_client(server), NS, batch=4, on_batch=die)


def test_a_newer_version_written_during_the_migration_wins() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    stale_single = _store(server)  # resolved the single layout before the migration
    assert stale_single.load_checkpoint("t20") is not None
    assert stale_single.keys.shards == SINGLE
    _interrupted(server, 1)
    # A store that still believes in the single layout: its writes are refused by the
    # scripts, and resent in the sharded layout (the thread moved first).
    result = stale_single.save_state("t20", _state(-1), version=500)
    assert result.outcome is WriteOutcome.WRITTEN
    assert stale_single.keys.shards == 16
    assert stale_single._ops.old is not None
    assert _client(server).exists(Keys(NS).thread("t20"))
    assert not _client(server).exists(f"{NS}:thread:t20")
    # An older version is stale against the record wherever it is.
    fresh = _store(server)
    assert fresh.save_state("t21", _state(-2), version=50).outcome is WriteOutcome.STALE
    assert fresh.save_state("t22", _state(-3), version=600).written
    assert fresh.delete_thread("t23").written
    expected.update(t20=500, t22=600, t23=None)
    report = migrate_namespace(_client(server), NS, batch=4)
    assert report.finished
    _check_migrated(server, expected)


def test_the_newer_copy_wins_whichever_layout_holds_it() -> None:
    """Both layouts holding one thread (planted: the protocol never leaves that): the
    higher version stays, the other is dropped."""
    server = fakeredis.FakeServer()
    old = _store(server, index_shards=SINGLE)
    old.save_state("a", _state(1), version=10)
    old.save_state("b", _state(2), version=30)
    new = Keys(NS)
    raw = _client(server)
    sharded = RedisCheckpointer(raw, namespace="other")  # records for the sharded keys
    sharded.save_state("a", _state(11), version=20)
    sharded.save_state("b", _state(22), version=25)
    other = Keys("other")
    for tid in ("a", "b"):
        raw.set(new.thread(tid), raw.get(other.thread(tid)) or b"")
        raw.zadd(new.index_of(new.shard(tid)), {tid: float("inf")})
    report = migrate_namespace(raw, NS)
    assert (report.moved, report.already_newer) == (1, 1)
    store = _store(server)
    assert [store.load_checkpoint(t).version for t in ("a", "b")] == [20, 30]  # type: ignore[union-attr]


def test_stores_of_both_layouts_read_and_list_during_the_migration() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    stale_single = _store(server)
    assert stale_single.keys.shards == SINGLE
    pages = stale_single.iter_threads(page_size=5)
    first = [next(pages) for _ in range(5)]
    _interrupted(server, 3)
    assert stale_single.keys.shards == SINGLE  # has not noticed yet
    counter = _store(server)
    assert counter.count_threads() == (len(counter.list_threads()), 0)
    assert stale_single.count_threads() == counter.count_threads()
    live = sorted(t for t, v in expected.items() if v is not None)
    # The listing begun in the single layout carries on over both, nothing twice or lost
    # (the crate's threads, in its set only, join the listing as they move).
    rest = list(pages)
    assert len(first + rest) == len(set(first + rest))
    ours = [t for t in live if not t.startswith("crate")]
    assert set(ours) <= set(first + rest) <= set(live)
    versions = stale_single.stored_versions(list(expected))
    assert versions == {t: v if v is not None else versions[t] for t, v in expected.items()}
    for tid, version in expected.items():
        checkpoint = stale_single.load_checkpoint(tid)
        assert (checkpoint.version if checkpoint else None) == version, tid
    assert stale_single.delete_thread("t1").written
    assert stale_single.load_checkpoint("t1") is None

    async def read() -> tuple[list[str], int | None]:
        store = AsyncRedisCheckpointer(fakeredis.aioredis.FakeRedis(server=server), namespace=NS)
        checkpoint = await store.load_checkpoint("t11")
        return sorted(await store.list_threads()), checkpoint.version if checkpoint else None

    listed, version = asyncio.run(read())
    assert set(ours) - {"t1"} <= set(listed) <= set(live) - {"t1"}
    assert version == 111
    migrate_namespace(_client(server), NS)
    expected["t1"] = None
    _check_migrated(server, expected)


def test_unreadable_records_move_as_they_are_and_bad_ids_stay() -> None:
    server = fakeredis.FakeServer()
    old = _store(server, index_shards=SINGLE)
    old.save_state("good", _state(1), version=3)
    raw = _client(server)
    raw.set("ns:thread:garbage", b"\x00\x01 not json")
    raw.zadd("ns:index", {"garbage": float("inf")})
    raw.hset("ns:thread:ahash", "f", "v")
    raw.set(b"ns:thread:\xff\xfe", b"{}")  # not UTF-8: no thread id of this release
    raw.zadd("ns:index", {"gone": 1.0})  # an entry whose record expired
    report = migrate_namespace(raw, NS)
    assert report.finished
    assert (report.moved, report.corrupt, report.skipped, report.expired) == (3, 2, 1, 1)
    assert sorted(report.corrupt_ids) == ["ahash", "garbage"]
    assert report.skipped_ids == ["\\xff\\xfe"]
    store = _store(server)
    with pytest.raises(CorruptState, match="garbage"):
        store.load_checkpoint("garbage")
    assert raw.type(store.keys.thread("ahash")) == b"hash"
    assert raw.get(b"ns:thread:\xff\xfe") == b"{}"  # left where it was
    assert sorted(store.list_threads()) == ["garbage", "good"]


def test_a_dry_run_counts_and_writes_nothing() -> None:
    server = fakeredis.FakeServer()
    _plant(server)
    raw = _client(server)
    raw.zadd("ns:index", {"gone": 1.0})
    before = {k: raw.dump(k) for k in raw.scan_iter()}
    report = migrate_namespace(raw, NS, dry_run=True)
    assert report.dry_run
    assert not report.finished
    assert (report.moved, report.tombstones, report.crate, report.expired) == (33, 2, 3, 1)
    assert {k: raw.dump(k) for k in raw.scan_iter()} == before


def test_namespaces_with_nothing_to_move() -> None:
    server = fakeredis.FakeServer()
    raw = _client(server)
    assert migrate_namespace(raw, NS).state == "empty"
    assert raw.keys("*") == []
    _store(server).save_state("t", _state(1))
    report = migrate_namespace(raw, NS)
    assert (report.state, report.finished, report.moved) == ("sharded", True, 0)
    raw.set("x:layout", "ringed:3")
    with pytest.raises(StoreMisconfigured, match="x:layout"):
        migrate_namespace(raw, "x")


def test_a_namespace_of_a_release_that_did_not_record_its_layout_migrates() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    _client(server).delete("ns:layout")
    assert migrate_namespace(_client(server), NS, batch=100).finished
    _check_migrated(server, expected)


def _crate_load(raw: fakeredis.FakeRedis, tid: str) -> AgentStateSnapshot | None:
    """The crate's load_state: GET ``<ns>:thread:<id>``, the whole value parsed as JSON
    (serde_json::from_str; an error if that fails), None if the key is absent."""
    value = raw.get(f"{NS}:thread:{tid}")
    if value is None:
        return None
    json.loads(value)  # the whole value, as serde_json::from_str parses it
    return AgentStateSnapshot.model_validate_json(value)


def _crate_list(raw: fakeredis.FakeRedis) -> set[str]:
    """The crate's list_threads: SMEMBERS ``<ns>:threads``."""
    return {m.decode() if isinstance(m, bytes) else m for m in raw.smembers(f"{NS}:threads")}


def test_what_the_rust_crate_reads_before_and_after_migration() -> None:
    """Before: the threads it wrote (not those this package saved: not JSON). After: nothing
    at all (no error either): the sharded keys are not its keys, and its set is gone."""
    server = fakeredis.FakeServer()
    _plant(server)
    raw = _client(server)
    assert _crate_load(raw, "crate1") == AgentStateSnapshot.model_validate_json(SEED_JSON)
    with pytest.raises(json.JSONDecodeError):
        _crate_load(raw, "t1")  # our record, in the single-index layout
    assert _crate_list(raw) == {"crate0", "crate1", "crate2"}
    migrate_namespace(raw, NS)
    for tid in ("crate1", "t1", "t4"):
        assert _crate_load(raw, tid) is None
    assert _crate_list(raw) == set()
    assert _store(server).load_checkpoint("crate1") is not None  # this package still reads it


def test_a_store_of_the_migrating_layout_notices_the_end() -> None:
    server = fakeredis.FakeServer()
    expected = _plant(server)
    _interrupted(server, 2)
    during = _store(server)
    assert during.load_checkpoint("t5") is not None
    assert during._ops.old is not None

    async def save_async() -> None:  # the asyncio store moves the thread the same way
        store = AsyncRedisCheckpointer(fakeredis.aioredis.FakeRedis(server=server), namespace=NS)
        assert (await store.save_state("t6", _state(6), version=700)).written
        assert store._ops.old is not None

    asyncio.run(save_async())
    assert not _client(server).exists(f"{NS}:thread:t6")
    migrate_namespace(_client(server), NS)
    assert during.save_state("t5", _state(5), version=800).written  # the move finds the end
    assert during.load_checkpoint("t5") is not None
    assert during._ops.old is None  # the layout read again: sharded only
    expected.update(t5=800, t6=700)
    _check_migrated(server, expected)
