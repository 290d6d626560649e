"""The buffered publisher's batching: what ends the linger, what wakes the thread, and the
bytes it counts, proved with a linger of an hour (a batch published sooner was ended by
something else) and a broker function the test controls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from agents_persistence import AgentStateSnapshot, InMemoryCheckpointer
from agents_persistence.checkpoint import PreparedSave
from agents_persistence.tasks.client.buffer import BufferedPublisher

pytestmark = pytest.mark.unit

HOUR = 3600.0
T = TypeVar("T")


class Broker:
    """Records each published batch as (thread id, version) pairs; can refuse the first."""

    def __init__(self, refuse_first: bool = False) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.refuse_first = refuse_first
        self.calls = 0
        self._cond = threading.Condition()

    def publish(self, batch: list[PreparedSave]) -> None:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            if self.refuse_first and self.calls == 1:
                raise ConnectionError("broker refused the connection")
        self.publish_recorded(batch)

    def publish_recorded(self, batch: list[PreparedSave]) -> None:
        with self._cond:
            self.batches.append([(s.thread_id, s.version) for s in batch])
            self._cond.notify_all()

    def wait_batches(self, count: int) -> list[list[tuple[str, int]]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.batches) >= count, timeout=30), (
                self.batches
            )
            return list(self.batches)

    def wait_calls(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls >= count, timeout=30), self.calls


class CountingCondition(threading.Condition):
    """A condition that counts ``notify_all`` calls (each wakes the publisher thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


def save(thread_id: str, version: int, pad: int = 0) -> PreparedSave:
    return InMemoryCheckpointer().prepare(
        thread_id,
        AgentStateSnapshot(scratchpad={"v": version, "pad": "x" * pad}),
        version=version,
    )


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def make(broker: Broker) -> Iterator[Any]:
    made: list[BufferedPublisher] = []

    def build(**options: Any) -> BufferedPublisher:
        settings: dict[str, Any] = {
            "max_batch": 100,
            "max_bytes": 1 << 20,
            "linger": HOUR,
            "capacity": 1000,
            "full_policy": "raise",
            **options,
        }
        publisher = BufferedPublisher(broker.publish, **settings)
        made.append(publisher)
        return publisher

    yield build
    for publisher in made:
        publisher.close(timeout=30)


def test_a_full_batch_is_published_without_waiting_out_the_linger(
    make: Any, broker: Broker
) -> None:
    publisher = make(max_batch=3)
    for i in range(3):
        publisher.submit(save(f"t{i}", 1))
    assert broker.wait_batches(1) == [[("t0", 1), ("t1", 1), ("t2", 1)]]


def test_a_batch_full_by_bytes_is_published_without_waiting_out_the_linger(
    make: Any, broker: Broker
) -> None:
    entries = [save(f"t{i}", 1, pad=1000) for i in range(3)]
    publisher = make(max_bytes=sum(len(s.body) for s in entries))
    for entry in entries[:2]:
        publisher.submit(entry)
    assert publisher.buffered_bytes == sum(len(s.body) for s in entries[:2])
    publisher.submit(entries[2])
    assert broker.wait_batches(1) == [[("t0", 1), ("t1", 1), ("t2", 1)]]
    assert publisher.buffered_bytes == 0


def test_a_replaced_snapshot_counts_with_its_new_size(make: Any, broker: Broker) -> None:
    small, large = save("a", 2), save("a", 3, pad=5000)
    publisher = make(max_bytes=len(large.body))
    publisher.submit(small)
    assert publisher.buffered_bytes == len(small.body)
    publisher.submit(save("a", 1, pad=9000))  # older: coalesced away, not counted
    assert publisher.buffered_bytes == len(small.body)
    publisher.submit(large)  # the buffer now holds max_bytes: the batch is full
    assert broker.wait_batches(1) == [[("a", 3)]]
    assert publisher.superseded == 2
    assert publisher.buffered_bytes == 0


def test_entries_that_do_not_fill_a_batch_do_not_wake_the_thread(
    make: Any, broker: Broker
) -> None:
    publisher = make(max_batch=10)
    publisher._cond = cond = CountingCondition()
    publisher.submit(save("t0", 1))  # the first: the thread waits for it
    woken = cond.notified
    for i in range(1, 9):
        publisher.submit(save(f"t{i}", 1))
        publisher.submit(save(f"t{i}", 2))  # replacing one, too
    assert cond.notified == woken
    assert broker.batches == []
    publisher.submit(save("t9", 1))  # the tenth fills the batch
    assert cond.notified == woken + 1
    assert len(broker.wait_batches(1)[0]) == 10


def test_flush_ends_the_linger(make: Any, broker: Broker) -> None:
    publisher = make()
    publisher.submit(save("a", 1))
    publisher.submit(save("b", 1))
    publisher.flush(timeout=30)
    assert broker.batches == [[("a", 1), ("b", 1)]]
    assert publisher.buffered == 0
    assert publisher.buffered_bytes == 0


def test_a_refused_batch_comes_back_with_its_bytes(make: Any) -> None:
    broker = Broker(refuse_first=True)
    publisher = BufferedPublisher(
        broker.publish, max_batch=2, max_bytes=1 << 20, linger=HOUR, capacity=10,
        full_policy="raise",
    )  # fmt: skip
    try:
        first, newer = save("a", 1, pad=100), save("a", 2, pad=300)
        publisher.submit(first)
        publisher.submit(save("b", 1))  # fills the batch: published, refused, put back
        broker.wait_batches(1)
        assert broker.batches == [[("a", 1), ("b", 1)]]
        assert publisher.buffered_bytes == 0
        with pytest.raises(Exception, match="broker refused"):
            publisher.submit(newer)  # the refusal is reported once, newer not taken
        publisher.submit(newer)
        publisher.flush(timeout=30)
        assert broker.batches[-1] == [("a", 2)]
        assert publisher.buffered_bytes == 0
    finally:
        publisher.close(timeout=30)


class GatedBroker(Broker):
    """Holds each publish until the test lets that many through (``permit``)."""

    def __init__(self) -> None:
        super().__init__()
        self.permitted = 0

    def publish(self, batch: list[PreparedSave]) -> None:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            call = self.calls
            self._cond.wait_for(lambda: self.permitted >= call)
        super().publish_recorded(batch)

    def permit(self, count: int) -> None:
        with self._cond:
            self.permitted = count
            self._cond.notify_all()


class WatchedCondition(threading.Condition):
    """A condition that knows which threads wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: set[str] = set()

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        self.waiters.add(threading.current_thread().name)
        self.notify_all()
        try:
            return super().wait_for(predicate, timeout)
        finally:
            self.waiters.discard(threading.current_thread().name)


def test_saves_waiting_for_room_coalesce_once_their_thread_is_in() -> None:
    broker = GatedBroker()
    publisher = BufferedPublisher(
        broker.publish, max_batch=1, max_bytes=1 << 20, linger=0.0, capacity=1,
        full_policy="block",
    )  # fmt: skip
    publisher._cond = cond = WatchedCondition()
    try:
        publisher.submit(save("a", 1))
        broker.wait_calls(1)  # "a" 1 is being published, held
        publisher.submit(save("a", 2))  # the buffer is full
        waiting = [
            threading.Thread(target=publisher.submit, args=(save("b", v),), name=f"b{v}")
            for v in (1, 2)
        ]
        for thread in waiting:
            thread.start()
        with cond:
            assert cond.wait_for(lambda: {"b1", "b2"} <= cond.waiters, 30)
        broker.permit(1)  # "a" 1 published; "a" 2 taken and held: room for one "b"
        for thread in waiting:  # the second finds its thread in the buffer: no more wait
            thread.join(30)
            assert not thread.is_alive()
        assert publisher.buffered == 1
        broker.permit(10)
        publisher.flush(timeout=30)
        assert broker.batches == [[("a", 1)], [("a", 2)], [("b", 2)]]
        assert publisher.superseded == 1
    finally:
        broker.permit(10)
        publisher.close(timeout=30)
