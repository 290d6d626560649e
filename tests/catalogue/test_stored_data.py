"""Catalogue: what may already sit in the store under our namespace.

Bytes that are not a record (corrupt, truncated, damaged header, bad compression, an
unknown envelope), the Rust crate's plain JSON (envelope schema 0) and keys of the wrong
Redis type. Loads give a typed error for that thread only (or load, for schema 0); saves
through the worker either replace what is not a record or are dead-lettered; listing,
version reads and every other thread carry on.
"""

from __future__ import annotations

import time
import zlib

import pytest
import redis
import zstandard
from agents_persistence import CorruptState
from agents_persistence.codec import format_version

from tests.catalogue.conftest import BYSTANDER, Served
from tests.support import SEED_JSON, sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis]

_HEADER_TAIL = b"%016d" % 1_700_000_000_000

#: Values that are not a record of ours; a save replaces each one.
NOT_RECORDS: dict[str, bytes] = {
    "corrupt-bytes": b"\x00\xff\x13garbage\x80\x81",
    "truncated-header": b"AP1j0000",
    "header-not-digits": b"AP1j" + b"x" * 20 + _HEADER_TAIL + b"{}",
    "bad-zlib": b"AP1z" + format_version(5) + _HEADER_TAIL + b"not zlib at all",
    "body-not-a-snapshot": b"AP1j" + format_version(5) + _HEADER_TAIL + b'{"todos": 3}',
    "zlib-not-a-snapshot": b"AP1z" + format_version(5) + _HEADER_TAIL + zlib.compress(b"[1]"),
    "bad-zstd": b"AP1s" + format_version(5) + _HEADER_TAIL + b"not zstd at all",
    "zstd-not-a-snapshot": b"AP1s"
    + format_version(5)
    + _HEADER_TAIL
    + zstandard.ZstdCompressor().compress(b"[1]"),
    "json-not-a-snapshot": b'{"todos": "not a list"}',
}


def _plant(served: Served, thread_id: str, value: bytes) -> None:
    served.store.client.set(served.store.keys.thread(thread_id), value)


def _save_through_worker(served: Served, thread_id: str, version: int) -> None:
    served.client.save_state(thread_id, sample_state(thread_id), version=version).wait(20)


def _others_fine(served: Served) -> None:
    assert served.store.load_state(BYSTANDER) == served.bystander
    assert BYSTANDER in served.store.list_threads()
    served.still_serving()


@pytest.mark.parametrize("value", list(NOT_RECORDS.values()), ids=list(NOT_RECORDS))
def test_not_a_record(served: Served, value: bytes) -> None:
    """Load: CorruptState naming the thread. Version reads: 0. The next save (any version)
    replaces it, through the worker."""
    tid = f"planted-{time.monotonic_ns()}"
    _plant(served, tid, value)
    with pytest.raises(CorruptState) as info:
        served.store.load_state(tid)
    assert info.value.thread_id == tid
    assert served.store.stored_versions([tid, BYSTANDER])[tid] in {0, 5}
    _others_fine(served)
    _save_through_worker(served, tid, 10)
    assert served.store.load_state(tid) == sample_state(tid)


def test_newer_envelope_schema(served: Served) -> None:
    """A record of an envelope schema this library does not know (``AP2``): load raises
    CorruptState ('newer than this library'); a save or delete refuses to replace it
    (CorruptState, 'not overwritten'); other threads are untouched."""
    tid = f"future-{time.monotonic_ns()}"
    record = b"AP2j" + format_version(5) + _HEADER_TAIL + b"{}"
    _plant(served, tid, record)
    with pytest.raises(CorruptState, match="newer than this library"):
        served.store.load_state(tid)
    with pytest.raises(CorruptState, match="not overwritten"):
        served.store.save_state(tid, sample_state(tid))
    with pytest.raises(CorruptState, match="not overwritten"):
        served.store.delete_thread(tid)
    assert served.store.client.get(served.store.keys.thread(tid)) == record
    _others_fine(served)


@pytest.mark.parametrize(
    "value",
    [SEED_JSON.encode(), b'{"todos": [{"content": "old", "status": "pending"}]}'],
    ids=["rust-json", "older-shape"],
)
def test_older_schema_loads(served: Served, value: bytes) -> None:
    """The Rust crate's plain JSON (envelope schema 0), even with fields missing, loads as
    version 0; any save replaces it."""
    tid = f"rust-{time.monotonic_ns()}"
    _plant(served, tid, value)
    checkpoint = served.store.load_checkpoint(tid)
    assert checkpoint is not None
    assert checkpoint.version == 0
    _save_through_worker(served, tid, 1)
    assert served.store.load_state(tid) == sample_state(tid)
    _others_fine(served)


def _wrong_type(client: redis.Redis, key: str, kind: str) -> None:
    if kind == "hash":
        client.hset(key, "field", "value")
    elif kind == "list":
        client.rpush(key, "a", "b")
    elif kind == "set":
        client.sadd(key, "a")
    elif kind == "zset":
        client.zadd(key, {"a": 1.0})
    else:
        client.xadd(key, {"a": "b"})


@pytest.mark.parametrize("kind", ["hash", "list", "set", "zset", "stream"])
def test_thread_key_of_wrong_type(served: Served, kind: str) -> None:
    """A foreign key of another Redis type where a thread's record belongs: load and delete
    raise CorruptState, a save is dead-lettered with CorruptState, the key is left as it
    was, version reads say 0, and everything else carries on."""
    tid = f"foreign-{kind}-{time.monotonic_ns()}"
    key = served.store.keys.thread(tid)
    _wrong_type(served.store.client, key, kind)
    with pytest.raises(CorruptState):
        served.store.load_state(tid)
    with pytest.raises(CorruptState):
        served.client.delete_thread(tid)
    assert served.store.stored_versions([tid]) == {tid: 0}
    before = len(served.letters())
    served.client.save_state(tid, sample_state(tid), version=3)
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "CorruptState"
    assert served.store.client.type(key) in {kind, kind.encode()}
    _others_fine(served)
