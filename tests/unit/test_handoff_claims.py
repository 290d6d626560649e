"""What the README says about a buffered hand-off the broker refused, proved on the buffer.

The publisher thread keeps a batch the broker refused and publishes it once the broker
answers; the failure is reported on the next ``save_state`` (``submit``) or ``flush``, and the
save that raised was not taken. The broker here is a function the test controls: it refuses
once, then hangs until the test lets it answer, so every step waits on a condition.
"""

from __future__ import annotations

import threading

import pytest
from agents_persistence import AgentStateSnapshot, HandOffError, InMemoryCheckpointer
from agents_persistence.checkpoint import PreparedSave
from agents_persistence.tasks.client.buffer import BufferedPublisher

pytestmark = pytest.mark.unit


class Broker:
    """Refuses the first publish, then holds each one until ``answer()``; records batches."""

    def __init__(self) -> None:
        self.calls = 0
        self.published: list[list[tuple[str, int]]] = []
        self._cond = threading.Condition()
        self._answering = False

    def publish(self, batch: list[PreparedSave]) -> None:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            if self.calls == 1:
                raise ConnectionError("broker refused the connection")
            self._cond.wait_for(lambda: self._answering)
            self.published.append([(s.thread_id, s.version) for s in batch])

    def wait_calls(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls >= count, timeout=30), self.calls

    def answer(self) -> None:
        with self._cond:
            self._answering = True
            self._cond.notify_all()


def save(thread_id: str, version: int) -> PreparedSave:
    return InMemoryCheckpointer().prepare(
        thread_id, AgentStateSnapshot(scratchpad={"v": version}), version=version
    )


def test_a_batch_the_broker_refused_is_kept_reported_and_published_later() -> None:
    broker = Broker()
    publisher = BufferedPublisher(
        broker.publish,
        max_batch=10,
        max_bytes=1 << 20,
        linger=0.0,
        capacity=100,
        full_policy="raise",
    )
    try:
        publisher.submit(save("a", 1))
        broker.wait_calls(2)  # refused once, and the same batch is being published again
        with pytest.raises(HandOffError, match="broker refused"):
            publisher.submit(save("b", 1))  # the failure is reported to the next save...
        assert publisher.buffered == 0  # ...which was not taken ("a" is in flight)
        broker.answer()
        publisher.flush(timeout=30)
        assert broker.published == [[("a", 1)]]  # the refused batch, published once
        publisher.submit(save("b", 2))
        publisher.flush(timeout=30)
        assert broker.published == [[("a", 1)], [("b", 2)]]
    finally:
        broker.answer()
        publisher.close(timeout=30)
