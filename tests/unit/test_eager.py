"""The whole hand-off path in eager mode: the real tasks run inline, over fakeredis.

The fixtures come from the package's own pytest plugin (:mod:`agents_persistence.tasks.testing`),
as they would
in a user's suite. Eager mode proves the logic (validation, message parsing, versioned
writes, dead letters); reliability needs the integration tests' real processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.errors import FlushTimeout, InvalidThreadId, StoreUnavailable
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer, HandOff
from agents_persistence.tasks.protocol.messages import batch_message, save_entry, save_message
from agents_persistence.tasks.protocol.names import DELETE_TASK, SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from celery.signals import task_postrun

from tests.support import sample_state

pytestmark = pytest.mark.unit


@pytest.fixture
def tasks_run() -> Iterator[list[str]]:
    """Names of the tasks run (inline) during the test, in order."""
    names: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        names.append(sender.name)

    task_postrun.connect(record, weak=False)
    try:
        yield names
    finally:
        task_postrun.disconnect(record)


def message(store: RedisCheckpointer, thread_id: str, version: int, **changes: Any) -> Any:
    """Keyword arguments of a save message, with ``changes`` applied."""
    save = store.prepare(thread_id, sample_state(f"{thread_id}@{version}"), version=version)
    return {**save_message(store.namespace, save), **changes}


def run(app: PersistenceApp, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run task ``name`` inline with these arguments (as a worker would) and return its result."""
    return app.tasks[name].apply(args=args, kwargs=kwargs, throw=True).get()


def replay(app: PersistenceApp, entry: dict[str, Any]) -> Any:
    """Run a dead letter's task again with its arguments, as recorded (what
    ``dead-letters replay`` publishes)."""
    result = run(app, entry["task"], *entry["args"], **entry["kwargs"])
    assert app.dead_letters.remove(entry["id"]) is not None
    return result


# -- saves ------------------------------------------------------------------------------------
def test_a_save_is_durable_when_save_state_returns(
    eager_checkpointer: CeleryCheckpointer, persistence_store: RedisCheckpointer
) -> None:
    handle = eager_checkpointer.save_state("t-1", sample_state("t-1@3"), version=3)

    assert isinstance(handle, HandOff)
    assert (handle.thread_id, handle.version) == ("t-1", 3)
    checkpoint = persistence_store.load_checkpoint("t-1")
    assert checkpoint is not None
    assert checkpoint.version == 3
    assert checkpoint.state == sample_state("t-1@3")
    assert checkpoint.saved_at is not None
    handle.wait(timeout=0)
    eager_checkpointer.flush(timeout=0)
    assert eager_checkpointer.pending == {}
    assert eager_checkpointer.handed_off == 1


def test_clock_versions_increase_and_the_newest_state_is_loaded(
    eager_checkpointer: CeleryCheckpointer,
) -> None:
    first = eager_checkpointer.save_state("t-1", sample_state("first"))
    second = eager_checkpointer.save_state("t-1", sample_state("second"))

    assert second.version > first.version
    assert eager_checkpointer.load_state("t-1") == sample_state("second")
    checkpoint = eager_checkpointer.load_checkpoint("t-1")
    assert checkpoint is not None
    assert checkpoint.version == second.version


def test_loads_and_listings_go_through_the_core(eager_checkpointer: CeleryCheckpointer) -> None:
    threads = [f"t-{i}" for i in range(7)]
    for tid in threads:
        eager_checkpointer.save_state(tid, sample_state(tid), version=1)

    assert sorted(eager_checkpointer.list_threads()) == threads
    assert sorted(eager_checkpointer.iter_threads(page_size=2)) == threads
    assert eager_checkpointer.load_state("t-3") == sample_state("t-3")
    assert eager_checkpointer.load_state("never-saved") is None
    assert eager_checkpointer.load_checkpoint("never-saved") is None


def test_bad_input_fails_before_anything_runs(
    eager_checkpointer: CeleryCheckpointer, eager_app: PersistenceApp, tasks_run: list[str]
) -> None:
    with pytest.raises(InvalidThreadId):
        eager_checkpointer.save_state("", sample_state())

    assert tasks_run == []
    assert eager_checkpointer.handed_off == 0
    assert eager_app.dead_letters.count() == 0


def test_stale_and_duplicate_versions_are_successes_that_change_nothing(
    eager_checkpointer: CeleryCheckpointer,
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
) -> None:
    assert run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 5)) == {
        "outcome": "written",
        "version": 5,
    }
    assert run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 5))["outcome"] == (
        "duplicate"
    )
    assert run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 4))["outcome"] == "stale"

    # Through the client: an older hand-off is superseded, so waiting for it returns at once.
    older = eager_checkpointer.save_state("t-1", sample_state("t-1@2"), version=2)
    older.wait(timeout=0)
    assert eager_checkpointer.load_state("t-1") == sample_state("t-1@5")
    assert eager_app.dead_letters.count() == 0


def test_a_delete_wins_over_older_saves(
    eager_checkpointer: CeleryCheckpointer,
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
) -> None:
    eager_checkpointer.save_state("t-1", sample_state("t-1@5"), version=5)
    eager_checkpointer.save_state("t-2", sample_state("t-2@1"), version=1)

    deleted = eager_checkpointer.delete_thread("t-1")

    assert deleted.written
    assert deleted.current_version > 5
    late = eager_checkpointer.save_state("t-1", sample_state("t-1@4"), version=4)
    late.wait(timeout=0)  # superseded by the tombstone
    assert run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 6))["outcome"] == "stale"
    assert eager_checkpointer.load_state("t-1") is None
    assert eager_checkpointer.list_threads() == ["t-2"]
    assert persistence_store.count_threads() == (1, 0)
    assert persistence_store.stored_versions(["t-1"]) == {"t-1": deleted.current_version}


def test_the_delete_task_applies_a_tombstone(
    eager_app: PersistenceApp, persistence_store: RedisCheckpointer
) -> None:
    run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 3))
    ns = persistence_store.namespace

    result = run(eager_app, DELETE_TASK, namespace=ns, thread_id="t-1", version=4)

    assert result == {"outcome": "written", "version": 4}
    assert run(eager_app, SAVE_TASK, **message(persistence_store, "t-1", 4))["outcome"] == (
        "duplicate"
    )
    assert persistence_store.load_state("t-1") is None


# -- the buffered mode and the batch task ------------------------------------------------------
@pytest.fixture
def buffered_client(
    persistence_settings: Settings, persistence_store: RedisCheckpointer
) -> Iterator[CeleryCheckpointer]:
    """A buffered client whose publisher lingers long enough to coalesce deterministically
    (until a flush)."""
    settings = persistence_settings.model_copy(
        update={"handoff_mode": "buffered", "batch_linger_seconds": 30.0}
    )
    client = CeleryCheckpointer(persistence_store, create_app(settings, store=persistence_store))
    try:
        yield client
    finally:
        client.close(timeout=5)


def test_buffered_hand_offs_coalesce_into_one_batch_task(
    buffered_client: CeleryCheckpointer,
    persistence_store: RedisCheckpointer,
    tasks_run: list[str],
) -> None:
    threads = [f"t-{i}" for i in range(10)]
    for version in range(1, 5):
        for tid in threads:
            buffered_client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)
    assert persistence_store.list_threads() == []  # still in the buffer

    buffered_client.flush(timeout=10)

    assert buffered_client.superseded == 30
    assert tasks_run == [SAVE_BATCH_TASK]
    publisher = buffered_client._publisher
    assert publisher is not None
    assert (publisher.published_messages, publisher.published_snapshots) == (1, 10)
    assert buffered_client.pending == {}
    assert persistence_store.stored_versions(threads) == dict.fromkeys(threads, 4)
    for tid in threads:
        assert persistence_store.load_state(tid) == sample_state(f"{tid}@4")


def test_the_batch_task_dead_letters_bad_entries_one_by_one(
    eager_app: PersistenceApp, persistence_store: RedisCheckpointer
) -> None:
    saves = [
        persistence_store.prepare(tid, sample_state(tid), version=1) for tid in ("a", "b", "c")
    ]
    kwargs = batch_message(persistence_store.namespace, saves)
    kwargs["entries"][1] = {**save_entry(saves[1]), "colour": "red"}

    counts = run(eager_app, SAVE_BATCH_TASK, **kwargs)

    assert counts == {"written": 2, "duplicate": 0, "stale": 0, "dead_lettered": 1}
    assert sorted(persistence_store.list_threads()) == ["a", "c"]
    (entry,) = eager_app.dead_letters.list()
    assert entry["batch"] is True
    assert entry["task"] == SAVE_TASK  # recorded as the single save it is
    assert entry["error"] == "BadMessage"
    assert entry["kwargs"]["thread_id"] == "b"
    assert "colour" in entry["reason"]


# -- dead letters -------------------------------------------------------------------------------
BAD_SAVES: list[Any] = [
    pytest.param(
        lambda m: ((m["namespace"], m["thread_id"], m["version"], m["state"], 1, "x"), {}),
        "BadMessage",
        "expected at most 5 arguments, got 6",
        id="wrong-arity",
    ),
    pytest.param(
        lambda m: ((), {**m, "colour": "red"}),
        "BadMessage",
        "colour",
        id="unknown-key",
    ),
    pytest.param(
        lambda m: ((), {k: v for k, v in m.items() if k != "state"}),
        "BadMessage",
        "state",
        id="missing-key",
    ),
    pytest.param(
        lambda m: ((), {**m, "state": '{"todos": [{"content": 1}'}),
        "InvalidSnapshot",
        "",
        id="invalid-json",
    ),
    pytest.param(
        lambda m: ((), {**m, "state": '{"todos": [{"content": "x", "status": "maybe"}]}'}),
        "InvalidSnapshot",
        "",
        id="invalid-snapshot",
    ),
    pytest.param(
        lambda m: ((), {**m, "namespace": "not:a-namespace"}),
        "BadMessage",
        "invalid namespace",
        id="invalid-namespace",
    ),
    pytest.param(
        lambda m: ((), {**m, "thread_id": ""}),
        "InvalidThreadId",
        "",
        id="bad-thread-id",
    ),
    pytest.param(
        lambda m: ((), {**m, "version": "7"}),
        "BadMessage",
        "version",
        id="version-as-string",
    ),
]


@pytest.mark.parametrize(("mangle", "error", "reason"), BAD_SAVES)
def test_bad_save_messages_are_dead_lettered_with_their_reason(
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
    mangle: Any,
    error: str,
    reason: str,
) -> None:
    args, kwargs = mangle(message(persistence_store, "t-1", 1))

    result = eager_app.tasks[SAVE_TASK].apply(args=args, kwargs=kwargs, throw=True).get()

    assert result == {"outcome": "dead_lettered"}
    (entry,) = eager_app.dead_letters.list()
    assert entry["error"] == error
    assert reason in entry["reason"]
    assert entry["task"] == SAVE_TASK
    assert entry["namespace"] == persistence_store.namespace
    assert (entry["args"], entry["kwargs"]) == (list(args), kwargs)
    assert persistence_store.list_threads() == []


def test_a_bad_delete_message_is_dead_lettered(
    eager_app: PersistenceApp, persistence_store: RedisCheckpointer
) -> None:
    result = run(eager_app, DELETE_TASK, namespace="not:a-namespace", thread_id="t", version=1)

    assert result == {"outcome": "dead_lettered"}
    (entry,) = eager_app.dead_letters.list()
    assert entry["task"] == DELETE_TASK
    assert "invalid namespace" in entry["reason"]


def test_a_store_outage_is_dead_lettered_then_replayed(
    eager_checkpointer: CeleryCheckpointer,
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(*_: Any) -> Any:
        raise StoreUnavailable("save: store unavailable (test)")

    with monkeypatch.context() as patch:
        patch.setattr(persistence_store, "save_many", down)
        handle = eager_checkpointer.save_state("t-1", sample_state("t-1@1"), version=1)

    # Eager mode has no Celery retries: the exhausted save goes straight to dead letters.
    (entry,) = eager_app.dead_letters.list()
    assert entry["error"] == "StoreUnavailable"
    assert entry["exhausted"] is True
    with pytest.raises(FlushTimeout) as timeout:
        handle.wait(timeout=0.01)
    assert timeout.value.pending == [("t-1", 1)]

    assert replay(eager_app, entry) == {"outcome": "written", "version": 1}

    handle.wait(timeout=0)
    assert eager_checkpointer.load_state("t-1") == sample_state("t-1@1")
    assert eager_app.dead_letters.count() == 0


def test_corrupt_state_is_dead_lettered_and_replayable_after_repair(
    eager_checkpointer: CeleryCheckpointer,
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
) -> None:
    key = persistence_store.keys.thread("t-1")
    persistence_store.client.hset(key, "not", "ours")

    eager_checkpointer.save_state("t-1", sample_state("t-1@1"), version=1)

    (entry,) = eager_app.dead_letters.list()
    assert entry["error"] == "CorruptState"
    persistence_store.client.delete(key)  # the operator's repair
    assert replay(eager_app, entry)["outcome"] == "written"
    assert eager_checkpointer.load_state("t-1") == sample_state("t-1@1")


def test_a_dead_lettered_batch_entry_replays_as_a_single_save(
    eager_app: PersistenceApp, persistence_store: RedisCheckpointer
) -> None:
    key = persistence_store.keys.thread("b")
    persistence_store.client.hset(key, "not", "ours")
    saves = [persistence_store.prepare(t, sample_state(t), version=1) for t in ("a", "b")]

    counts = run(eager_app, SAVE_BATCH_TASK, **batch_message(persistence_store.namespace, saves))

    assert counts["written"] == 1
    assert counts["dead_lettered"] == 1
    (entry,) = eager_app.dead_letters.list()
    assert entry["batch"] is True
    assert entry["task"] == SAVE_TASK
    persistence_store.client.delete(key)
    assert replay(eager_app, entry)["outcome"] == "written"
    assert sorted(persistence_store.list_threads()) == ["a", "b"]


def test_an_unexpected_error_reaches_the_caller_in_eager_mode(
    eager_checkpointer: CeleryCheckpointer,
    eager_app: PersistenceApp,
    persistence_store: RedisCheckpointer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(persistence_store, "save_many", broken)

    # Eager tasks propagate errors they do not expect (a worker dead-letters them): the
    # agent gets the exception and still holds its state.
    with pytest.raises(RuntimeError, match="a bug"):
        eager_checkpointer.save_state("t-1", sample_state(), version=1)
    assert eager_app.dead_letters.count() == 0
