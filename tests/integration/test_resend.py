"""A message the broker lost after accepting it is re-sent by ``flush``/``wait``.

kombu's Redis transport takes a message off the queue before recording it as
unacknowledged; a worker SIGKILLed in between loses it, and no visibility timeout brings it
back. The client keeps each thread's newest un-confirmed snapshot and re-sends it.
"""

from __future__ import annotations

import pytest
from agents_persistence.errors import FlushTimeout

from tests.integration.conftest import StackFactory
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["durable", "buffered"])
def test_flush_resends_a_message_the_broker_lost(stack_factory: StackFactory, mode: str) -> None:
    stack = stack_factory(resend_pending_after_seconds=0.5)
    client = stack.client(mode=mode)
    handles = [client.save_state(f"lost-{i}", sample_state(f"v{i}")) for i in range(20)]
    if client._publisher is not None:
        client._publisher.flush(10)
    assert stack.queued() >= 1
    assert stack.broker is not None
    stack.broker.delete(stack.queue)  # the broker "loses" every accepted message
    stack.worker()
    client.flush(timeout=60)
    assert client.resent == 20
    assert client.pending == {}
    for i, handle in enumerate(handles):
        checkpoint = stack.store.load_checkpoint(handle.thread_id)
        assert checkpoint is not None
        assert checkpoint.version == handle.version
        assert checkpoint.state == sample_state(f"v{i}")


@pytest.mark.timeout(60)
def test_wait_names_what_stays_pending_without_a_worker(stack_factory: StackFactory) -> None:
    stack = stack_factory(resend_pending_after_seconds=0.2)
    client = stack.client()
    handle = client.save_state("nobody-home", sample_state("x"))
    with pytest.raises(FlushTimeout, match="nobody-home") as info:
        handle.wait(timeout=1.0)
    assert info.value.pending == [("nobody-home", handle.version)]
    assert client.resent >= 1  # re-sent, still nobody to write it
    assert client.pending == {"nobody-home": handle.version}


@pytest.mark.timeout(240)  # a hang guard: 4,100 durable hand-offs on a busy machine
def test_outbox_is_pruned_without_flush(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.worker()
    client = stack.client()
    for i in range(1100):
        client.save_state(f"p-{i}", sample_state(str(i)))
    client.flush(timeout=90)
    assert client.pending == {}
    for i in range(3000):
        client.save_state(f"q-{i}", sample_state(str(i)))
    # pruning reads happen as the outbox doubles: it never holds every thread ever saved
    assert len(client.pending) < 3000
    client.flush(timeout=90)
    assert client.pending == {}
