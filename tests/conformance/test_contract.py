"""The Checkpointer contract, run against every backend (see ``conftest.py``)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agents_persistence import (
    AgentStateSnapshot,
    BaseCheckpointer,
    Checkpointer,
    Codec,
    InvalidSnapshot,
    InvalidThreadId,
    InvalidVersion,
    SnapshotTooLarge,
    WriteOutcome,
)

from tests.conformance.conftest import Backend
from tests.support import SEED_JSON, odd_thread_ids, sample_state

W, D, S = WriteOutcome.WRITTEN, WriteOutcome.DUPLICATE, WriteOutcome.STALE


def files_tag(store: BaseCheckpointer, thread_id: str) -> str | None:
    """The tag ``sample_state`` put in the stored state, or None if nothing is stored."""
    state = store.load_state(thread_id)
    return None if state is None else str(state.scratchpad["tag"])


# -- basic round trip -----------------------------------------------------------------------------
def test_is_a_checkpointer(store: BaseCheckpointer) -> None:
    assert isinstance(store, Checkpointer)


def test_save_load_list_delete_round_trip(store: BaseCheckpointer) -> None:
    assert store.load_state("t1") is None
    assert store.list_threads() == []

    state = sample_state("one")
    result = store.save_state("t1", state)
    assert result.written
    assert (result.thread_id, result.outcome) == ("t1", W)
    assert result.current_version == result.version

    assert store.load_state("t1") == state
    assert store.list_threads() == ["t1"]

    deleted = store.delete_thread("t1")
    assert deleted.written
    assert deleted.version > result.version
    assert store.load_state("t1") is None
    assert store.load_checkpoint("t1") is None
    assert store.list_threads() == []


def test_seed_json_round_trips_key_for_key(store: BaseCheckpointer) -> None:
    store.save_state("seed", AgentStateSnapshot.model_validate_json(SEED_JSON))
    loaded = store.load_state("seed")
    assert loaded is not None
    assert json.loads(loaded.model_dump_json()) == json.loads(SEED_JSON)


def test_a_json_shaped_mapping_is_accepted(store: BaseCheckpointer) -> None:
    store.save_state("m", json.loads(SEED_JSON))
    loaded = store.load_state("m")
    assert loaded == AgentStateSnapshot.model_validate_json(SEED_JSON)


def test_stored_state_is_a_copy(store: BaseCheckpointer) -> None:
    state = sample_state("orig")
    store.save_state("t", state)
    state.files["later.txt"] = "mutated after save"
    loaded = store.load_state("t")
    assert loaded is not None
    assert "later.txt" not in loaded.files
    loaded.files["again.txt"] = "mutated after load"
    assert "again.txt" not in (store.load_state("t") or AgentStateSnapshot()).files


def test_default_versions_increase(store: BaseCheckpointer) -> None:
    first = store.save_state("t", sample_state("a"))
    second = store.save_state("t", sample_state("b"))
    assert second.written
    assert second.version > first.version
    assert files_tag(store, "t") == "b"


def test_delete_of_unknown_thread_leaves_nothing_listed(store: BaseCheckpointer) -> None:
    assert store.delete_thread("never-saved").written
    assert store.list_threads() == []
    assert store.load_state("never-saved") is None


@pytest.mark.parametrize("thread_id", odd_thread_ids())
def test_odd_thread_ids(store: BaseCheckpointer, thread_id: str) -> None:
    store.save_state("plain", sample_state("plain"))
    store.save_state(thread_id, sample_state("odd"))
    assert files_tag(store, thread_id) == "odd"
    assert sorted(store.list_threads()) == sorted(["plain", thread_id])
    store.delete_thread(thread_id)
    assert store.load_state(thread_id) is None
    assert store.list_threads() == ["plain"]
    assert files_tag(store, "plain") == "plain"


def test_odd_thread_ids_do_not_collide(store: BaseCheckpointer) -> None:
    ids = [*odd_thread_ids(), "x", "thread", "a", "b:c", "a:b"]
    for i, tid in enumerate(ids):
        store.save_state(tid, sample_state(str(i)))
    assert sorted(store.list_threads()) == sorted(ids)
    for i, tid in enumerate(ids):
        assert files_tag(store, tid) == str(i)


# -- namespaces -----------------------------------------------------------------------------------
def test_namespaces_are_isolated(backend: Backend) -> None:
    ns_a, ns_b = backend.namespace, backend.new_namespace()
    a, b = backend.make(namespace=ns_a), backend.make(namespace=ns_b)
    a.save_state("same", sample_state("in-a"), version=5)
    b.save_state("same", sample_state("in-b"), version=3)
    a.save_state("only-a", sample_state("only-a"))

    assert files_tag(a, "same") == "in-a"
    assert files_tag(b, "same") == "in-b"
    assert sorted(a.list_threads()) == ["only-a", "same"]
    assert b.list_threads() == ["same"]

    b.delete_thread("same")
    assert files_tag(a, "same") == "in-a"
    assert b.load_state("same") is None
    # b's tombstone does not make a's thread stale, nor the other way round
    assert a.save_state("same", sample_state("a2"), version=6).written
    assert b.count_threads() == (0, 0)
    for key in backend.keys(ns_a):
        assert key.startswith(f"{ns_a}:".encode())
    for key in backend.keys(ns_b):
        assert key.startswith(f"{ns_b}:".encode())


# -- TTL ------------------------------------------------------------------------------------------
# A TTL test checks that an entry is alive before its TTL and gone after it. "Gone" is a wait
# (until the TTL has surely passed). "Alive" only proves something if the check ran before the
# TTL could have ended: a machine that pauses the test for longer than the TTL makes it
# inconclusive, not failed. So each scenario runs with a short TTL, and again with twice the TTL
# when a failed check ran too late to count (never when it ran in time).
class _Inconclusive(Exception):
    """A check relied on an entry being alive, but ran after the entry's TTL could have ended."""


class _Alive:
    """Checks that rely on entries written after ``since`` (a ``time.monotonic()`` taken just
    before the write) being alive: a failure counts only if it came before ``since + ttl``."""

    def __init__(self, since: float, ttl: float) -> None:
        self.since, self.ttl = since, ttl

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        late = time.monotonic() - self.since >= self.ttl
        if kind is not None and issubclass(kind, AssertionError) and late:
            raise _Inconclusive


def _wait_past(moment: float) -> None:
    """Wait until ``time.monotonic()`` is past ``moment`` (an entry's latest possible expiry)."""
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left + 0.005)


def _with_ttl(scenario: Callable[[float], None], ttl: float = 0.2, attempts: int = 5) -> None:
    """Run ``scenario(ttl)``, doubling ``ttl`` while its checks are inconclusive."""
    for _ in range(attempts):
        try:
            scenario(ttl)
            return
        except _Inconclusive:
            ttl *= 2
    pytest.fail(f"every attempt paused longer than its TTL (up to {ttl / 2} s)")


@pytest.mark.parametrize("unit", ["seconds", "timedelta"])
def test_ttl_expiry(backend: Backend, unit: str) -> None:
    def scenario(ttl: float) -> None:
        given = ttl if unit == "seconds" else timedelta(seconds=ttl)
        store = backend.make(namespace=backend.new_namespace(), ttl=given)
        assert store.ttl == timedelta(seconds=ttl)
        since = time.monotonic()
        store.save_state("short", sample_state("s"))
        with _Alive(since, ttl):
            assert files_tag(store, "short") == "s"
            assert store.list_threads() == ["short"]
            assert store.count_threads() == (1, 0)
        _wait_past(time.monotonic() + ttl)
        assert store.load_state("short") is None
        assert store.load_checkpoint("short") is None
        assert store.list_threads() == []  # before any cleanup
        assert list(store.iter_threads(page_size=1)) == []
        assert store.count_threads() == (0, 1)
        assert store.cleanup_expired() == 1
        assert store.count_threads() == (0, 0)
        assert store.cleanup_expired() == 0  # idempotent

    _with_ttl(scenario)


def test_ttl_in_whole_seconds(backend: Backend) -> None:
    store = backend.make(ttl=2)
    assert store.ttl == timedelta(seconds=2)
    store.save_state("t", sample_state())
    assert store.list_threads() == ["t"]


def test_every_write_refreshes_the_ttl(backend: Backend) -> None:
    def scenario(ttl: float) -> None:
        store = backend.make(namespace=backend.new_namespace(), ttl=ttl)
        first = time.monotonic()
        store.save_state("t", sample_state("1"))
        _wait_past(first + ttl * 0.6)
        second = time.monotonic()
        store.save_state("t", sample_state("2"))
        _wait_past(first + ttl)  # past the first save's TTL, inside the second's
        with _Alive(second, ttl):
            assert files_tag(store, "t") == "2"
            assert store.list_threads() == ["t"]
        _wait_past(time.monotonic() + ttl)
        assert store.load_state("t") is None

    _with_ttl(scenario, ttl=0.4)


def test_cleanup_only_touches_expired_entries(backend: Backend) -> None:
    def scenario(ttl: float) -> None:
        store = backend.make(namespace=backend.new_namespace(), ttl=ttl)
        store.save_state("gone-1", sample_state())
        store.save_state("gone-2", sample_state())
        _wait_past(time.monotonic() + ttl)
        since = time.monotonic()
        store.save_state("fresh", sample_state("fresh"))
        with _Alive(since, ttl):
            assert store.count_threads() == (1, 2)
            assert store.list_threads() == ["fresh"]
            assert store.cleanup_expired(limit=1) == 1
            assert store.cleanup_expired() == 1
            assert store.cleanup_expired() == 0
            assert store.count_threads() == (1, 0)
            assert files_tag(store, "fresh") == "fresh"

    _with_ttl(scenario)


def test_an_expired_thread_can_be_saved_again(backend: Backend) -> None:
    store = backend.make(ttl=0.2)
    store.save_state("t", sample_state("old"), version=7)
    _wait_past(time.monotonic() + 0.2)
    # the record expired with its version: any version starts the thread afresh
    assert store.save_state("t", sample_state("new"), version=1).written
    assert files_tag(store, "t") == "new"


@pytest.mark.parametrize("ttl", [0, -1, 0.0001, float("nan"), True])
def test_bad_ttl_is_refused(backend: Backend, ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        backend.make(ttl=ttl)


# -- versions and tombstones ----------------------------------------------------------------------
def test_equal_version_is_a_duplicate_and_changes_nothing(store: BaseCheckpointer) -> None:
    assert store.save_state("t", sample_state("first"), version=3).outcome is W
    again = store.save_state("t", sample_state("second"), version=3)
    assert (again.outcome, again.current_version) == (D, 3)
    assert files_tag(store, "t") == "first"


def test_out_of_order_versions_newest_wins(store: BaseCheckpointer) -> None:
    versions = list(range(1, 11))
    random.Random(1234).shuffle(versions)
    newest = 0
    for v in versions:
        result = store.save_state("t", sample_state(f"v{v}"), version=v)
        expected = W if v > newest else S
        assert result.outcome is expected, (v, newest)
        newest = max(newest, v)
        assert result.current_version == newest
        assert files_tag(store, "t") == f"v{newest}"
    for v in versions:  # a redelivery of every save
        expected = D if v == 10 else S
        assert store.save_state("t", sample_state("late"), version=v).outcome is expected
    checkpoint = store.load_checkpoint("t")
    assert checkpoint is not None
    assert checkpoint.version == 10
    assert checkpoint.state.scratchpad["tag"] == "v10"


def test_load_checkpoint_has_version_and_saved_at(store: BaseCheckpointer) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.save_state("t", sample_state("c"), version=42)
    after = datetime.now(UTC) + timedelta(seconds=1)
    checkpoint = store.load_checkpoint("t")
    assert checkpoint is not None
    assert checkpoint.thread_id == "t"
    assert checkpoint.version == 42
    assert checkpoint.saved_at is not None
    assert checkpoint.saved_at.tzinfo is not None
    assert before <= checkpoint.saved_at <= after
    assert checkpoint.state == sample_state("c")
    assert store.load_checkpoint("missing") is None


def test_a_delete_keeps_older_saves_out(store: BaseCheckpointer) -> None:
    saved = store.save_state("t", sample_state("before"), version=5)
    deleted = store.delete_thread("t")
    assert deleted.written
    assert deleted.version > saved.version
    for v in (4, 5, 6):  # late, redelivered or out-of-order saves from before the delete
        assert store.save_state("t", sample_state("late"), version=v).stale
    assert store.load_state("t") is None
    assert store.list_threads() == []
    assert store.count_threads() == (0, 0)
    # a save made after the delete (its clock version is newer) brings the thread back
    assert store.save_state("t", sample_state("after")).written
    assert files_tag(store, "t") == "after"
    assert store.list_threads() == ["t"]


def test_explicit_delete_version(store: BaseCheckpointer) -> None:
    store.save_state("t", sample_state("v5"), version=5)
    stale = store.delete_thread("t", version=3)  # older than the state: nothing happens
    assert (stale.outcome, stale.current_version) == (S, 5)
    assert files_tag(store, "t") == "v5"

    deleted = store.delete_thread("t", version=10)
    assert (deleted.outcome, deleted.version, deleted.current_version) == (W, 10, 10)
    assert store.delete_thread("t", version=10).outcome is D
    assert store.save_state("t", sample_state("v9"), version=9).outcome is S
    assert store.save_state("t", sample_state("v10"), version=10).outcome is D
    assert store.load_state("t") is None
    assert store.save_state("t", sample_state("v11"), version=11).outcome is W
    assert files_tag(store, "t") == "v11"
    assert store.list_threads() == ["t"]


def test_delete_before_any_save_is_a_tombstone_too(store: BaseCheckpointer) -> None:
    store.delete_thread("t", version=100)
    assert store.save_state("t", sample_state(), version=99).stale
    assert store.load_state("t") is None
    assert store.save_state("t", sample_state("new"), version=101).written


def test_tombstones_expire(backend: Backend) -> None:
    def scenario(ttl: float) -> None:
        store = backend.make(namespace=backend.new_namespace(), tombstone_ttl=ttl)
        since = time.monotonic()
        store.delete_thread("t", version=50)
        with _Alive(since, ttl):
            assert store.save_state("t", sample_state(), version=10).stale
        _wait_past(time.monotonic() + ttl)
        assert store.save_state("t", sample_state("back"), version=10).written
        assert files_tag(store, "t") == "back"

    _with_ttl(scenario)


# -- listing --------------------------------------------------------------------------------------
def _save_threads(store: BaseCheckpointer, ids: list[str]) -> None:
    results = store.save_many([store.prepare(tid, sample_state(tid), version=1) for tid in ids])
    assert all(not isinstance(r, Exception) and r.written for r in results)


def test_iter_threads_yields_every_thread_once(store: BaseCheckpointer) -> None:
    ids = [f"thread-{i:04d}" for i in range(1050)]
    _save_threads(store, ids)
    for page_size in (1, 7, 500):
        seen = list(store.iter_threads(page_size=page_size))
        assert len(seen) == len(ids), page_size
        assert sorted(seen) == ids, page_size
    assert sorted(store.list_threads()) == ids
    assert store.count_threads() == (1050, 0)


@pytest.mark.parametrize("page_size", [0, -1, 100_001, True, 2.5])
def test_iter_threads_refuses_bad_page_sizes(store: BaseCheckpointer, page_size: Any) -> None:
    with pytest.raises(ValueError, match="page_size"):
        list(store.iter_threads(page_size=page_size))


@pytest.mark.parametrize("ttl", [None, 60.0], ids=["no-ttl", "ttl"])
def test_iter_threads_while_threads_change(backend: Backend, ttl: float | None) -> None:
    store = backend.make(ttl=ttl)
    ids = [f"t{i:03d}" for i in range(60)]
    _save_threads(store, ids)
    pages = store.iter_threads(page_size=7)
    first = [next(pages) for _ in range(7)]
    unseen = [tid for tid in sorted(ids) if tid not in first]

    cursor = first[-1]
    deleted = {cursor, *unseen[::10]}  # the cursor itself and a few not reached yet
    resaved = {*first[:3], *unseen[1::10]}
    for tid in deleted:
        store.delete_thread(tid)
    for tid in resaved:
        store.save_state(tid, sample_state("again"))
    store.save_state("t-new", sample_state("new"))

    rest = list(pages)
    seen = first + rest
    always_live = set(ids) - deleted
    assert always_live <= set(seen)
    assert not (deleted - {cursor}) & set(seen)
    assert set(seen) <= set(ids) | {"t-new"}
    repeated = {tid for tid in seen if seen.count(tid) > 1}
    assert repeated <= resaved  # only a re-saved thread may come round again
    if ttl is None:
        assert repeated == set()  # without TTL a save does not move a thread in the index
    assert sorted(store.list_threads()) == sorted(always_live | {"t-new"})


# -- batches and counts ---------------------------------------------------------------------------
def test_save_many_reports_each_save(store: BaseCheckpointer) -> None:
    assert store.save_many([]) == []
    batch = [
        store.prepare("a", sample_state("a1"), version=1),
        store.prepare("b", sample_state("b1"), version=1),
        store.prepare("a", sample_state("a2"), version=2),
        store.prepare("b", sample_state("b1-again"), version=1),
        store.prepare("c", sample_state("c5"), version=5),
        store.prepare("c", sample_state("c3"), version=3),
    ]
    results = store.save_many(batch)
    outcomes = [(r.thread_id, r.version, r.outcome, r.current_version) for r in results]  # type: ignore[union-attr]
    assert outcomes == [
        ("a", 1, W, 1),
        ("b", 1, W, 1),
        ("a", 2, W, 2),
        ("b", 1, D, 1),
        ("c", 5, W, 5),
        ("c", 3, S, 5),
    ]
    assert [files_tag(store, t) for t in "abc"] == ["a2", "b1", "c5"]
    assert store.save_prepared(store.prepare("a", sample_state("a3"), version=3)).written


def test_count_threads(backend: Backend) -> None:
    def scenario(ttl: float) -> None:
        store = backend.make(namespace=backend.new_namespace(), ttl=ttl)
        assert store.count_threads() == (0, 0)
        store.save_state("e1", sample_state())
        store.save_state("e2", sample_state())
        _wait_past(time.monotonic() + ttl)
        since = time.monotonic()
        store.save_state("live-1", sample_state())
        store.save_state("live-2", sample_state())
        with _Alive(since, ttl):
            assert store.count_threads() == (2, 2)
            store.delete_thread("live-2")
            assert store.count_threads() == (1, 2)
            store.save_state("live-1", sample_state())  # a re-save is not a second entry
            assert store.count_threads() == (1, 2)
            store.cleanup_expired()
            assert store.count_threads() == (1, 0)

    _with_ttl(scenario)


# -- invalid input --------------------------------------------------------------------------------
BAD_THREAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
    pytest.param("\t\n", id="whitespace"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("x" * 513, id="too-long"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
    pytest.param(b"bytes", id="bytes"),
]
BAD_VERSIONS = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(True, id="bool"),
    pytest.param(2**63, id="too-big"),
    pytest.param(1.0, id="float"),
    pytest.param("3", id="str"),
]
BAD_SNAPSHOTS = [
    pytest.param({"todos": "not a list"}, id="todos-type"),
    pytest.param({"todos": [{"content": "x", "status": "blocked"}]}, id="unknown-status"),
    pytest.param({"files": {"a": 1}}, id="files-type"),
    pytest.param({"scratchpad": {"x": float("nan")}}, id="nan-mapping"),
    pytest.param({"scratchpad": {"x": float("inf")}}, id="inf-mapping"),
    pytest.param({"unknown": 1}, id="extra-key"),
    pytest.param({"pending_interrupts": [{"type": "other", "tool_name": "x"}]}, id="bad-tag"),
    pytest.param(
        AgentStateSnapshot.model_construct(
            todos=[], files={}, scratchpad={"x": float("nan")}, pending_interrupts=[]
        ),
        id="nan-model",
    ),
    pytest.param([1, 2], id="list"),
    pytest.param("{}", id="str"),
    pytest.param(None, id="none"),
]


def assert_nothing_written(backend: Backend, store: BaseCheckpointer) -> None:
    assert store.list_threads() == []
    assert store.count_threads() == (0, 0)
    assert backend.keys() == []


@pytest.mark.parametrize("thread_id", BAD_THREAD_IDS)
def test_invalid_thread_id(backend: Backend, thread_id: Any) -> None:
    store = backend.make()
    with pytest.raises(InvalidThreadId):
        store.save_state(thread_id, sample_state())
    with pytest.raises(InvalidThreadId):
        store.prepare(thread_id, sample_state())
    with pytest.raises(InvalidThreadId):
        store.load_state(thread_id)
    with pytest.raises(InvalidThreadId):
        store.load_checkpoint(thread_id)
    with pytest.raises(InvalidThreadId):
        store.delete_thread(thread_id)
    assert_nothing_written(backend, store)


def test_longest_thread_id_is_accepted(store: BaseCheckpointer) -> None:
    tid = "y" * 512
    assert store.save_state(tid, sample_state()).written
    assert store.list_threads() == [tid]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_invalid_version(backend: Backend, version: Any) -> None:
    store = backend.make()
    with pytest.raises(InvalidVersion):
        store.save_state("t", sample_state(), version=version)
    with pytest.raises(InvalidVersion):
        store.delete_thread("t", version=version)
    assert_nothing_written(backend, store)


def test_largest_version_is_accepted(store: BaseCheckpointer) -> None:
    top = 2**63 - 1
    assert store.save_state("t", sample_state("top"), version=top).written
    assert store.save_state("t", sample_state(), version=top - 1).stale
    checkpoint = store.load_checkpoint("t")
    assert checkpoint is not None
    assert checkpoint.version == top


@pytest.mark.parametrize("state", BAD_SNAPSHOTS)
def test_invalid_snapshot(backend: Backend, state: Any) -> None:
    store = backend.make()
    with pytest.raises(InvalidSnapshot) as info:
        store.save_state("t", state)
    assert type(info.value) is InvalidSnapshot
    assert_nothing_written(backend, store)


def test_snapshot_size_cap(backend: Backend) -> None:
    state = sample_state("big", size=2000)
    size = len(Codec().dump_json(state))
    at_cap = backend.make(codec=Codec(max_snapshot_bytes=size))
    below = backend.make(
        namespace=backend.new_namespace(), codec=Codec(max_snapshot_bytes=size - 1)
    )

    with pytest.raises(SnapshotTooLarge) as info:
        below.save_state("t", state)
    assert (info.value.size, info.value.limit) == (size, size - 1)
    assert below.list_threads() == []
    assert at_cap.save_state("t", state).written
