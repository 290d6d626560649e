"""Catalogue, class 2: bombs in stored data, and dead letters that stay bounded.

A record whose compressed body inflates far beyond the size cap is refused while it
inflates (CorruptState), never allocated whole; a zstd frame that states such a size is
refused before anything is inflated. A dead letter of refused input keeps an
excerpt (with the original size and digest), whatever was sent; one of a valid hand-off the
store failed keeps its arguments whole, for replay. Dead letters are read a page at a time,
and one that is not a JSON object is shown escaped, never as a traceback.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import orjson
import pytest
import redis
from agents_persistence import Codec, CorruptState, RedisCheckpointer
from agents_persistence.lists import BoundedList, MemoryList
from agents_persistence.tasks import SAVE_TASK
from agents_persistence.tasks.cli.main import main
from agents_persistence.tasks.worker.dead_letters import (
    EXCERPT_BYTES,
    DeadLetters,
    encode_entry,
    make_entry,
)
from click.testing import CliRunner

from tests.catalogue.cases import zlib_bomb, zstd_bomb
from tests.catalogue.conftest import MAX_SNAPSHOT_BYTES, Served
from tests.support import RedisServer, sample_state
from tests.support.celery_worker import settings_env

#: The issue's case: 207 KB of zlib stored under a thread key, 200 MiB once inflated.
BOMB_INFLATED = 200 * 1024 * 1024


@pytest.fixture(
    params=[
        pytest.param("fakeredis", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def store(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[RedisCheckpointer]:
    """A store with the default codec (16 MiB cap) on fakeredis or the machine's Redis."""
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("real_redis_url"))
    made = RedisCheckpointer(client, namespace=namespace_factory(), codec=Codec())
    try:
        yield made
    finally:
        made.close()


def test_zlib_bomb_record(store: RedisCheckpointer) -> None:
    """A 207 KB record inflating to 200 MiB: the load raises CorruptState, having held at
    most a few times the cap plus its margin (20 MiB) in memory, not 200 MiB; version
    reads and the next save carry on (the save replaces it)."""
    record = b"AP1z" + b"%020d" % 5 + b"%016d" % 1_700_000_000_000 + zlib_bomb(BOMB_INFLATED)
    assert len(record) < 250_000
    tid = f"bomb-{uuid.uuid4().hex[:8]}"
    store.client.set(store.keys.thread(tid), record)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptState, match="inflates beyond"):
            store.load_state(tid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * store.codec.load_limit < BOMB_INFLATED / 3, peak
    assert store.stored_versions([tid]) == {tid: 5}
    assert store.save_state(tid, sample_state(tid), version=6).written
    assert store.load_state(tid) == sample_state(tid)


@pytest.mark.parametrize("states_size", [True, False], ids=["size-stated", "size-unstated"])
def test_zstd_bomb_record(store: RedisCheckpointer, states_size: bool) -> None:
    """A few KB of zstd under a thread key, 200 MiB once inflated: the load raises
    CorruptState having held at most a few times the cap plus its margin; version reads and
    the next save carry on (the save replaces it)."""
    frame = zstd_bomb(BOMB_INFLATED, states_size=states_size)
    record = b"AP1s" + b"%020d" % 5 + b"%016d" % 1_700_000_000_000 + frame
    assert len(record) < 250_000
    tid = f"bomb-{uuid.uuid4().hex[:8]}"
    store.client.set(store.keys.thread(tid), record)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptState, match="inflates beyond"):
            store.load_state(tid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * store.codec.load_limit < BOMB_INFLATED / 3, peak
    assert store.stored_versions([tid]) == {tid: 5}
    assert store.save_state(tid, sample_state(tid), version=6).written
    assert store.load_state(tid) == sample_state(tid)


def test_refused_input_keeps_an_excerpt(served: Served) -> None:
    """A save message of 4 MB (the cap is 64 KiB): dead-lettered as SnapshotTooLarge with an
    excerpt of at most 64 KiB, the original size and its sha256; never replayed whole."""
    kwargs = {**served.good_message(), "state": json.dumps({"files": {"a": "z" * 4_000_000}})}
    task_id = served.send(SAVE_TASK, kwargs=kwargs)
    entry = served.dead_letter_for(task_id)
    assert entry["error"] == "SnapshotTooLarge"
    assert entry["truncated"] is True
    assert entry["original_bytes"] > 4_000_000
    assert len(entry["sha256"]) == 64
    assert "kwargs" not in entry
    raw = served.store.dead_letter_list(served.settings.dead_letter_max_length).newest(1)[0]
    assert len(raw) <= EXCERPT_BYTES
    assert MAX_SNAPSHOT_BYTES < 4_000_000
    served.still_serving()


def test_store_failure_keeps_its_arguments_whole() -> None:
    """A valid hand-off the store failed (retries exhausted) keeps its 1 MB arguments whole,
    so a replay recovers it; refused input of the same size keeps an excerpt whose digest
    is that of the whole entry."""
    state = sample_state("big", size=1_000_000).model_dump_json()
    kwargs = {"namespace": "ns", "thread_id": "t", "version": 3, "state": state, "saved_at_ms": 1}
    failed = make_entry("store down", "StoreUnavailable", exhausted=True, kwargs=kwargs)
    assert orjson.loads(encode_entry(failed))["kwargs"] == kwargs
    refused = make_entry("too large", "SnapshotTooLarge", kwargs=kwargs)
    whole = orjson.dumps(refused)
    kept = orjson.loads(encode_entry(refused))
    assert kept["sha256"] == hashlib.sha256(whole).hexdigest()
    assert kept["original_bytes"] == len(whole)
    assert whole.decode().startswith(kept["excerpt"])
    assert len(encode_entry(refused)) <= EXCERPT_BYTES


class _Recording(BoundedList):
    """A MemoryList that records the size of every read it serves."""

    def __init__(self, inner: MemoryList) -> None:
        super().__init__(inner.max_length)
        self.inner, self.reads = inner, list[int]()

    def push(self, entry: bytes) -> None:
        self.inner.push(entry)

    def page(self, start: int, count: int) -> list[bytes]:
        self.reads.append(count)
        return self.inner.page(start, count)

    def remove(self, entry: bytes) -> bool:
        return self.inner.remove(entry)

    def count(self) -> int:
        return self.inner.count()

    def clear(self) -> int:
        return self.inner.clear()


def test_dead_letters_are_read_a_page_at_a_time() -> None:
    """Listing, finding and removing 1,000 entries never reads more than 100 at once; the
    oldest entry is found and removed."""
    recording = _Recording(MemoryList(10_000))
    letters = DeadLetters(recording)
    entries = [make_entry(f"r{i}", "BadMessage", task=SAVE_TASK, kwargs={}) for i in range(1000)]
    for entry in entries:
        letters.push(entry)
    assert len(letters.list(1000)) == 1000
    removed = letters.remove(entries[0]["id"])
    assert removed is not None
    assert removed["id"] == entries[0]["id"]
    assert letters.count() == 999
    assert max(recording.reads) <= 100


MALFORMED: dict[str, bytes] = {
    "not-json": b"\xff\x00garbage",
    "json-array": b"[1, 2]",
    "terminal-escape": orjson.dumps({"id": "esc", "reason": "\x1b[2J\x1b[31mred\u202etxt"}),
}


@pytest.mark.redis
def test_dead_letters_list_survives_malformed_entries(
    redis_server: RedisServer, tmp_path: Any
) -> None:
    """``dead-letters list`` (table and --json) over entries that are not JSON objects or
    hold terminal escapes and bidi controls: exit 0, each shown escaped, no traceback;
    ``replay`` of a malformed one is a clean error."""
    namespace = f"cat-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url=redis_server.url, namespace=namespace)
    store = RedisCheckpointer.from_url(redis_server.url, namespace=namespace)
    raw_list = store.dead_letter_list(100)
    for value in MALFORMED.values():
        raw_list.push(value)
    raw_list.push(encode_entry(make_entry("fine", "BadMessage", task=SAVE_TASK, kwargs={})))
    runner = CliRunner()
    table = runner.invoke(main, ["dead-letters", "list"], env=env, catch_exceptions=False)
    assert table.exit_code == 0, table.output
    assert "\x1b" not in table.output
    assert "\u202e" not in table.output
    assert "malformed" in table.output
    listed = runner.invoke(main, ["dead-letters", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.output)
    assert len(entries) == 4
    assert sum(1 for e in entries if e.get("malformed")) == 2
    replay = runner.invoke(main, ["dead-letters", "replay", "esc"], env=env)
    assert replay.exit_code == 1
    assert "cannot be replayed" in replay.output
    assert "Traceback" not in replay.output
    store.close()
