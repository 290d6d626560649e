"""The hand-off path end to end: real ``celery -A agents_persistence.tasks worker`` / ``beat``
subprocesses.

Each test runs its own private redis-server (store and broker) and its own processes.
"""

from __future__ import annotations

import base64
import pathlib
import pickle
import random
import re
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import pytest
from agents_persistence.tasks.protocol.names import CLEANUP_TASK, SAVE_BATCH_TASK, SAVE_TASK

from tests.integration.conftest import Stack, StackFactory
from tests.support import sample_state
from tests.support.celery_worker import kill_outside_pop_window

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def assert_newest(stack: Stack, expected: dict[str, int]) -> None:
    """Every thread holds exactly the expected version, with the matching content."""
    held = stack.store.stored_versions(list(expected))
    wrong = {tid: (held[tid], v) for tid, v in expected.items() if held[tid] != v}
    assert not wrong, f"{len(wrong)} thread(s) not at their newest version (held, want): " + (
        str(dict(list(wrong.items())[:10]))
    )
    for tid, version in expected.items():
        checkpoint = stack.store.load_checkpoint(tid)
        assert checkpoint is not None
        assert checkpoint.version == version
        assert checkpoint.state == sample_state(f"{tid}@{version}")


def hand_off_all(stack: Stack, saves: Sequence[tuple[str, int]], producers: int) -> None:
    """Hand ``saves`` off from ``producers`` threads sharing one client, then flush."""
    client = stack.client()
    chunks = [saves[i::producers] for i in range(producers)]
    errors: list[BaseException] = []

    def produce(chunk: Sequence[tuple[str, int]]) -> None:
        try:
            for tid, version in chunk:
                client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert client.handed_off == len(saves)
    client.flush(timeout=60)


def _snapshots_applied(log: str) -> int:
    """Snapshots the worker's log shows applied: one per save_state task, and each entry's
    outcome of a save_states task."""
    singles = len(re.findall(r"save_state\[[^\]]+\] succeeded", log))
    batches = sum(
        sum(int(n) for n in re.findall(r"'(?:written|duplicate|stale|dead_lettered)': (\d+)", m))
        for m in re.findall(r"save_states\[[^\]]+\] succeeded in [^:]+: (\{[^}]*\})", log)
    )
    return singles + batches


@pytest.mark.timeout(90)
def test_out_of_order_hand_offs_end_at_the_newest_version(stack: Stack) -> None:
    worker = stack.worker(concurrency=2)
    saves = [(f"ooo-{t:02d}", v) for t in range(50) for v in range(1, 11)]
    random.Random(7).shuffle(saves)

    hand_off_all(stack, saves, producers=4)

    assert_newest(stack, {f"ooo-{t:02d}": 10 for t in range(50)})
    assert sorted(stack.store.list_threads()) == [f"ooo-{t:02d}" for t in range(50)]
    # Concurrent durable saves share messages (group commit): a save_state task per lone
    # snapshot, a save_states task per group. Every snapshot is applied exactly once.
    worker.wait_until(lambda: _snapshots_applied(worker.log_text()) >= len(saves), 60, "saves")
    stack.wait_idle()
    assert _snapshots_applied(worker.log_text()) == len(saves)
    # Shuffled versions reach the store out of order: the older ones arriving late were
    # refused, never applied.
    assert worker.log_count("'outcome': 'stale'") > 0
    assert stack.app().dead_letters.count() == 0


@pytest.mark.timeout(60)
def test_a_delete_wins_over_older_saves_still_queued(stack: Stack) -> None:
    client = stack.client()
    for version in range(1, 6):
        client.save_state("doomed", sample_state(f"doomed@{version}"), version=version)
    client.save_state("kept", sample_state("kept@1"), version=1)
    assert stack.queued() == 6  # no worker yet: everything waits in the broker

    deleted = client.delete_thread("doomed")
    assert deleted.written
    worker = stack.worker(concurrency=2)
    client.flush(timeout=30)
    worker.wait_for_tasks(SAVE_TASK, 6)
    stack.wait_idle()

    assert worker.task_count(SAVE_TASK) == 6
    assert worker.log_count("'outcome': 'stale'") == 5
    assert client.load_state("doomed") is None
    assert client.list_threads() == ["kept"]
    assert stack.store.stored_versions(["doomed"]) == {"doomed": deleted.current_version}


@pytest.mark.timeout(60)
def test_poison_messages_are_dead_lettered_and_the_worker_keeps_serving(stack: Stack) -> None:
    worker = stack.worker(concurrency=2)
    app = stack.app()
    ns = stack.settings.namespace
    good: dict[str, Any] = {
        "namespace": ns,
        "thread_id": "poison",
        "version": 1,
        "state": sample_state("poison@1").model_dump_json(),
        "saved_at_ms": 1,
    }
    poison: list[tuple[str, dict[str, Any]]] = [
        ("wrong arity", {"args": [ns, "poison", 1, "{}", 1, "extra"]}),
        ("unknown keys", {"kwargs": {**good, "colour": "red"}}),
        ("invalid snapshot", {"kwargs": {**good, "state": '{"todos": [{"content": 1}'}}),
        # (a valid other namespace goes to that namespace's own list: tests/catalogue)
        ("invalid namespace", {"kwargs": {**good, "namespace": "not:a-namespace"}}),
    ]
    for _, message in poison:
        app.send_task(SAVE_TASK, queue=stack.queue, **message)
    app.send_task("agents_persistence.no_such_task", kwargs=good, queue=stack.queue)
    # A good save behind the poison: the worker must still be serving.
    client = stack.client()
    client.save_state("after", sample_state("after@1"), version=1).wait(timeout=30)

    letters = stack.wait_dead_letters(len(poison) + 1)
    stack.wait_idle()
    assert worker.running
    assert len(letters) == len(poison) + 1, letters
    by_reason = " | ".join(entry["reason"] for entry in letters)
    assert "expected at most 5 arguments, got 6" in by_reason
    assert "colour" in by_reason
    assert "invalid namespace" in by_reason
    assert "unknown task" in by_reason
    for entry in letters:
        assert entry["namespace"] == ns
        assert entry["reason"]
        assert entry["error"]
    assert {e["error"] for e in letters} >= {"BadMessage", "InvalidSnapshot"}
    assert client.load_state("poison") is None
    assert client.list_threads() == ["after"]


class _TouchOnUnpickle:
    """A payload that creates a file as soon as it is unpickled."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.timeout(60)
def test_a_pickled_message_is_never_executed(stack: Stack, tmp_path: pathlib.Path) -> None:
    # The payload is armed: unpickling it here creates a file.
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(armed)))
    assert armed.exists()

    worker = stack.worker(concurrency=2)
    app = stack.app()
    target = tmp_path / "pwned"
    app.send_task(
        SAVE_TASK, args=(_TouchOnUnpickle(target),), queue=stack.queue, serializer="pickle"
    )
    client = stack.client()
    client.save_state("after-pickle", sample_state("after-pickle@1"), version=1).wait(30)
    (entry,) = stack.wait_dead_letters(1)
    stack.wait_idle()

    assert not target.exists()
    assert worker.running
    assert app.dead_letters.count() == 1
    assert entry["content_type"] == "application/x-python-serialize"
    assert entry["task"] == SAVE_TASK
    assert "disallowed" in entry["reason"].lower() or "pickle" in entry["reason"].lower()
    assert base64.b64decode(entry["body_base64"])  # kept for the operator, never decoded
    assert not target.exists()
    assert client.list_threads() == ["after-pickle"]


@pytest.mark.timeout(60)
def test_beat_removes_expired_entries_from_the_index(stack_factory: StackFactory) -> None:
    stack = stack_factory(ttl_seconds=0.3, cleanup_interval_seconds=1)
    worker = stack.worker(concurrency=1)
    threads = [f"exp-{i}" for i in range(20)]
    for tid in threads:
        stack.store.save_state(tid, sample_state(tid))
    assert sum(stack.store.count_threads()) == 20  # live or (on a slow machine) expired

    # Expired, but nothing removed them from the index yet (no beat is running).
    deadline = time.monotonic() + 5
    while stack.store.count_threads() != (0, 20):
        assert time.monotonic() < deadline, stack.store.count_threads()
        time.sleep(0.05)
    assert stack.store.list_threads() == []

    beat = stack.beat()
    deadline = time.monotonic() + 15
    while stack.store.count_threads() != (0, 0):
        assert time.monotonic() < deadline, (stack.store.count_threads(), beat.log_tail())
        time.sleep(0.1)
    assert beat.sent_count(CLEANUP_TASK) >= 1
    worker.wait_for_log("'removed': 20", timeout=5)
    assert stack.store.list_threads() == []


def _kill_mid_stream(stack: Stack) -> None:
    """Stream saves, SIGKILL the worker's whole group mid-stream, restart, lose nothing."""
    worker = stack.worker(concurrency=2)
    client = stack.client()
    threads = [f"k-{i:03d}" for i in range(150)]
    rounds = 3
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for version in range(1, rounds + 1):
                for n, tid in enumerate(threads):
                    client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)
                    if n % 10 == 0:
                        time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        # Kill once the worker is into the last round: the messages it holds then are the
        # final versions of their threads, so losing one would show.
        deadline = time.monotonic() + 30
        while max(stack.store.stored_versions(threads).values()) < rounds:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.002)
        assert len(worker.child_pids()) == 2
        if stack.broker is not None:
            kill_outside_pop_window(
                worker, stack.broker, stack.queue, timeout=deadline - time.monotonic()
            )
        else:
            worker.kill_group()
    finally:
        producer.join(60)
    assert not errors, errors
    assert worker.returncode == -signal.SIGKILL
    assert worker.group_pids() == []

    held = stack.store.stored_versions(threads)
    assert any(held[tid] < rounds for tid in threads), "the worker finished before the kill"
    if stack.broker is not None:
        # The dead worker's messages wait in the unacked hash for the visibility timeout.
        assert stack.unacked() > 0

    # Hand-offs keep being accepted while no worker runs (new threads: nothing masks them).
    late = [f"late-{i:02d}" for i in range(20)]
    for tid in late:
        client.save_state(tid, sample_state(f"{tid}@1"), version=1)

    stack.worker(concurrency=2)
    client.flush(timeout=45)

    assert_newest(stack, {**dict.fromkeys(threads, rounds), **dict.fromkeys(late, 1)})
    if stack.broker is not None:
        stack.wait_idle(timeout=15)
    assert stack.app().dead_letters.count() == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_of_the_worker_group_loses_nothing_redis(stack_factory: StackFactory) -> None:
    _kill_mid_stream(stack_factory(visibility_timeout_seconds=5))


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(90)
def test_sigkill_of_the_worker_group_loses_nothing_rabbitmq(
    stack_factory: StackFactory, rabbitmq_url: str
) -> None:
    _kill_mid_stream(stack_factory(broker_url=rabbitmq_url))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["durable", "buffered"])
def test_both_hand_off_modes_end_durable_after_flush(
    stack: Stack, mode: Literal["durable", "buffered"]
) -> None:
    worker = stack.worker(concurrency=2)
    client = stack.client(mode=mode)
    threads = [f"{mode}-{i:02d}" for i in range(60)]
    for version in range(1, 6):
        for tid in threads:
            client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)

    client.flush(timeout=30)

    assert client.pending == {}
    assert_newest(stack, dict.fromkeys(threads, 5))
    if mode == "buffered":
        assert worker.task_count(SAVE_TASK) == 0
        publisher = client._publisher
        assert publisher is not None
        assert publisher.published_snapshots + client.superseded == len(threads) * 5
        assert publisher.published_messages < publisher.published_snapshots
        worker.wait_for_tasks(SAVE_BATCH_TASK, publisher.published_messages)
    else:
        worker.wait_for_tasks(SAVE_TASK, len(threads) * 5)
    stack.wait_idle()
    assert stack.app().dead_letters.count() == 0
