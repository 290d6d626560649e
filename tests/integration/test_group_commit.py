"""Durable group commit against a real broker and a real ``celery -A agents_persistence.tasks
worker``: 20 agent threads hand off at once; concurrent saves share messages, and every save
that ``save_state`` returned for is in the store after ``flush`` (none lost), with its
content. On the private Redis broker and on RabbitMQ (publisher confirms; a queue of its own).
"""

from __future__ import annotations

import threading

import pytest
from agents_persistence.tasks import CeleryCheckpointer

from tests.integration.conftest import Stack, StackFactory
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis]

AGENTS = 20
SAVES = 30  # per agent: a new thread id each, and one thread of its own saved every time


def hand_off(client: CeleryCheckpointer) -> dict[str, int]:
    """``AGENTS`` threads save at once; returns every acknowledged save (thread -> version)."""
    acked: dict[str, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(AGENTS)

    def agent(i: int) -> None:
        go.wait()
        try:
            for j in range(SAVES):
                for tid, version in ((f"a{i}-s{j}", 1), (f"a{i}", j + 1)):
                    handle = client.save_state(
                        tid, sample_state(f"{tid}@{version}"), version=version
                    )
                    assert (handle.thread_id, handle.version) == (tid, version)
                    with lock:
                        acked[tid] = version
        except BaseException as exc:  # asserted below, after the join
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return acked


def check_stored(stack: Stack, client: CeleryCheckpointer, acked: dict[str, int]) -> None:
    client.flush(timeout=180)
    saves = AGENTS * SAVES * 2
    assert (client.handed_off, client.published_snapshots) == (saves, saves)
    # Concurrent saves shared messages (one message per save would be `saves` messages).
    assert client.published_messages < saves // 2, client.published_messages
    held = stack.store.stored_versions(list(acked))
    lost = {tid: v for tid, v in acked.items() if held.get(tid) != v}
    assert lost == {}
    for tid, version in acked.items():
        assert stack.store.load_state(tid) == sample_state(f"{tid}@{version}")


@pytest.mark.timeout(300)
def test_twenty_threads_of_durable_saves_share_messages_and_none_is_lost(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory()
    stack.worker(concurrency=2)
    client = stack.client(mode="durable")
    acked = hand_off(client)
    check_stored(stack, client, acked)
    stack.wait_idle(60)


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
def test_twenty_threads_of_durable_saves_on_rabbitmq_share_confirmed_messages(
    stack_factory: StackFactory, rabbitmq_url: str
) -> None:
    stack = stack_factory(broker_url=rabbitmq_url)
    stack.worker(concurrency=2)
    client = stack.client(mode="durable")
    acked = hand_off(client)
    check_stored(stack, client, acked)
