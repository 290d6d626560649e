"""What RedisCheckpointer leaves in Redis, and how it copes with what others left there.

Runs on fakeredis and on the real server (``redis_backend``); raw keys are planted and read
through the backend's own client, inside the test's namespace.
"""

from __future__ import annotations

import json
import time
import zlib

import pytest
import zstandard
from agents_persistence import AgentStateSnapshot, CorruptState, RedisCheckpointer
from agents_persistence.codec import HEADER_SIZE

from tests.conformance.conftest import Backend
from tests.support import SEED_JSON, sample_state


def redis_store(backend: Backend, **kwargs: object) -> RedisCheckpointer:
    store = backend.make(**kwargs)  # type: ignore[arg-type]
    assert isinstance(store, RedisCheckpointer)
    return store


# -- layout ---------------------------------------------------------------------------------------
def test_only_thread_keys_and_the_index_remain(redis_backend: Backend) -> None:
    store = redis_store(redis_backend)
    store.save_state("a", sample_state())
    store.save_state("a", sample_state(), version=1)  # stale: its staged copy is dropped
    store.save_state("b:c", sample_state())
    keys = store.keys
    indexes = {keys.index_of(keys.shard(tid)) for tid in ("a", "b:c")}
    assert redis_backend.keys() == sorted(
        k.encode() for k in (keys.layout, *indexes, keys.thread("a"), keys.thread("b:c"))
    )


def test_record_header_ttl_and_index_score(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend, ttl=30)
    keys = store.keys
    store.save_state("t", sample_state(), version=123)
    raw = client.get(keys.thread("t"))
    assert isinstance(raw, bytes)
    assert raw[:4] == b"AP1j"
    assert raw[4:24] == b"%020d" % 123
    assert json.loads(raw[HEADER_SIZE:]) == json.loads(sample_state().model_dump_json())
    assert 29_000 < client.pttl(keys.thread("t")) <= 30_000
    score = client.zscore(keys.index_of(keys.shard("t")), "t")
    assert score is not None
    assert abs(score - (time.time() * 1000 + 30_000)) < 5_000

    forever = redis_store(redis_backend, namespace=redis_backend.new_namespace())
    forever.save_state("t", sample_state())
    assert client.pttl(forever.keys.thread("t")) == -1
    assert client.zscore(forever.keys.index_of(forever.keys.shard("t")), "t") == float("inf")


def test_a_save_without_ttl_persists_a_thread_saved_with_one(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    short, forever = redis_store(redis_backend, ttl=0.3), redis_store(redis_backend)
    short.save_state("t", sample_state(), version=1)
    forever.save_state("t", sample_state("kept"), version=2)
    assert client.pttl(forever.keys.thread("t")) == -1
    time.sleep(0.4)
    assert short.cleanup_expired() == 0
    assert short.list_threads() == ["t"]


def test_large_snapshots_are_stored_compressed(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    big = sample_state("big", size=64 * 1024)
    store.save_state("big", big)
    raw = client.get(store.keys.thread("big"))
    assert isinstance(raw, bytes)
    assert raw[:4] == b"AP1s"  # zstd
    assert len(raw) < 16 * 1024
    inflated = zstandard.ZstdDecompressor().decompress(raw[HEADER_SIZE:])
    assert json.loads(inflated) == json.loads(big.model_dump_json())
    assert store.load_state("big") == big


def test_empty_interrupts_are_not_written(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    store.save_state("none", sample_state())
    store.save_state("some", AgentStateSnapshot.model_validate_json(SEED_JSON))
    none_raw, some_raw = (client.get(store.keys.thread(t)) for t in ("none", "some"))
    assert isinstance(none_raw, bytes)
    assert isinstance(some_raw, bytes)
    assert "pending_interrupts" not in json.loads(none_raw[HEADER_SIZE:])
    assert json.loads(some_raw[HEADER_SIZE:]) == json.loads(SEED_JSON)


# -- JSON written by the Rust crate ---------------------------------------------------------------
def test_plain_json_from_the_rust_crate_loads_as_version_0(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    client.set(store.keys.thread("rust"), SEED_JSON)

    checkpoint = store.load_checkpoint("rust")
    assert checkpoint is not None
    assert (checkpoint.version, checkpoint.saved_at) == (0, None)
    assert json.loads(checkpoint.state.model_dump_json()) == json.loads(SEED_JSON)

    replaced = store.save_state("rust", sample_state("ours"), version=1)
    assert replaced.written
    assert store.load_state("rust") == sample_state("ours")
    assert store.list_threads() == ["rust"]


def test_rust_json_can_be_deleted(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    client.set(store.keys.thread("rust"), SEED_JSON)
    assert store.delete_thread("rust").written
    assert store.load_state("rust") is None


# -- corrupt records ------------------------------------------------------------------------------
def _header(kind: bytes, version: int = 5) -> bytes:
    return b"AP1" + kind + b"%020d" % version + b"%016d" % 1_700_000_000_000


CORRUPT = [
    pytest.param(b"\x00\xffgarbage\x80\x81 not ours", id="garbage"),
    pytest.param(b"AP1j123", id="truncated-header"),
    pytest.param(b"AP1jNOTDIGITS" + b"0" * 40, id="malformed-header"),
    pytest.param(_header(b"z") + b"this is not zlib", id="bad-zlib"),
    pytest.param(_header(b"z") + zlib.compress(b"{not json"), id="zlib-of-bad-json"),
    pytest.param(_header(b"s") + b"this is not zstd", id="bad-zstd"),
    pytest.param(
        _header(b"s") + zstandard.ZstdCompressor().compress(b"{not json"), id="zstd-of-bad-json"
    ),
    pytest.param(_header(b"j") + b'{"todos": [', id="bad-json"),
    pytest.param(_header(b"j") + b'{"todos": 5}', id="json-wrong-shape"),
    pytest.param(_header(b"j") + b'{"files": {"a": "\xff\xfe"}}', id="bad-utf8"),
    pytest.param(_header(b"q") + b"{}", id="unknown-kind"),
    pytest.param(b'{"todos": "nope"}', id="rust-json-wrong-shape"),
    pytest.param(b"[1, 2, 3]", id="json-array"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("raw", CORRUPT)
def test_corrupt_record_fails_only_its_thread(redis_backend: Backend, raw: bytes) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    store.save_state("bad:thread", sample_state("was fine"))
    store.save_state("good", sample_state("good"))
    client.set(store.keys.thread("bad:thread"), raw)

    with pytest.raises(CorruptState) as info:
        store.load_state("bad:thread")
    assert info.value.thread_id == "bad:thread"
    assert "'bad:thread'" in str(info.value)
    with pytest.raises(CorruptState):
        store.load_checkpoint("bad:thread")

    assert sorted(store.list_threads()) == ["bad:thread", "good"]
    assert store.load_state("good") == sample_state("good")
    assert store.save_state("good", sample_state("good2")).written

    # a new save over bytes that are not ours repairs the thread
    assert store.save_state("bad:thread", sample_state("repaired")).written
    assert store.load_state("bad:thread") == sample_state("repaired")


def test_wrong_redis_type_is_corrupt_state(redis_backend: Backend) -> None:
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    store.save_state("good", sample_state("good"))
    client.hset(store.keys.thread("hash"), "field", "value")

    with pytest.raises(CorruptState) as loading:
        store.load_state("hash")
    assert loading.value.thread_id == "hash"
    with pytest.raises(CorruptState) as saving:
        store.save_state("hash", sample_state())
    assert saving.value.thread_id == "hash"
    assert saving.value.__cause__ is not None
    with pytest.raises(CorruptState):
        store.delete_thread("hash")

    batch = [store.prepare(t, sample_state(t)) for t in ("before", "hash", "after")]
    results = store.save_many(batch)
    assert isinstance(results[1], CorruptState)
    assert results[1].thread_id == "hash"
    assert [getattr(r, "written", None) for r in (results[0], results[2])] == [True, True]
    assert sorted(store.list_threads()) == ["after", "before", "good"]
    assert client.type(store.keys.thread("hash")) == b"hash"  # never overwritten


def test_newer_schema_record_is_never_overwritten(redis_backend: Backend) -> None:
    """A record from a newer library (envelope schema 2+) is refused, not replaced."""
    client = redis_backend.raw_client()
    store = redis_store(redis_backend)
    newer = b"AP2j" + b"9" * 20 + b"%016d" % 1_700_000_000_000 + b"{}"
    client.set(store.keys.thread("newer"), newer)
    store.save_state("good", sample_state("good"))

    with pytest.raises(CorruptState, match="newer than this library") as loading:
        store.load_state("newer")
    assert loading.value.thread_id == "newer"
    with pytest.raises(CorruptState, match="newer envelope schema"):
        store.save_state("newer", sample_state("older library"))
    big = sample_state("x" * 100_000)  # the staging (MULTI + RENAME) path too
    with pytest.raises(CorruptState, match="newer envelope schema"):
        store.save_state("newer", big)
    with pytest.raises(CorruptState, match="newer envelope schema"):
        store.delete_thread("newer")
    results = store.save_many([store.prepare(t, sample_state(t)) for t in ("newer", "ok")])
    assert isinstance(results[0], CorruptState)
    assert getattr(results[1], "written", None) is True
    assert client.get(store.keys.thread("newer")) == newer
    assert not client.exists(store.keys.staging)
    assert store.load_state("good") == sample_state("good")


# -- paging over a shared index -------------------------------------------------------------------
@pytest.mark.parametrize("change", ["deleted", "moved-later", "moved-earlier", "unchanged"])
def test_paging_after_the_cursor_entry_changed(redis_backend: Backend, change: str) -> None:
    """Every thread after the cursor is yielded however the cursor's own entry changed."""
    mid, late = redis_store(redis_backend, ttl=600), redis_store(redis_backend, ttl=1200)
    early = redis_store(redis_backend, ttl=300)
    ids = [f"t{i:02d}" for i in range(20)]
    mid.save_many([mid.prepare(tid, sample_state(), version=1) for tid in ids])
    pages = mid.iter_threads(page_size=5)
    first = [next(pages) for _ in range(5)]
    cursor = first[-1]
    if change == "deleted":
        mid.delete_thread(cursor)
    elif change == "moved-later":
        late.save_state(cursor, sample_state())
    elif change == "moved-earlier":
        early.save_state(cursor, sample_state())
    rest = list(pages)
    assert set(ids) - {cursor} <= set(first + rest)
    assert len(first + rest) == len(set(first + rest)) + (change == "moved-later")
