"""RabbitMQ quorum queues (``queue_type = "quorum"``) with real ``celery worker`` processes.

A quorum queue stores hand-offs like a classic one, answers Celery's remote control, and
RabbitMQ reports it as quorum. A queue that exists with the other type is refused clearly:
at hand-off (``BrokerMisconfigured``, nothing enqueued), at the worker's start (one CRITICAL
line, then the worker ends instead of consuming) and by ``doctor``. The faults (store
outage with retries, worker SIGKILL) are in ``tests/faults/test_quorum_faults.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents_persistence import BrokerMisconfigured
from agents_persistence.tasks.broker.queues import QUORUM_DELIVERY_LIMIT, SWITCH_FIX
from agents_persistence.tasks.cli.doctor import run_checks
from kombu import Connection

from tests.integration.conftest import StackFactory
from tests.integration.test_worker import assert_newest
from tests.support import sample_state
from tests.support.celery_cli import node_name, wait_for_reply
from tests.support.celery_worker import CeleryProcessError, CeleryWorker
from tests.support.rabbitmq import queue_type_on_broker, ready_messages


@pytest.mark.timeout(120)
def test_a_quorum_queue_stores_hand_offs_and_answers_ping(
    stack_factory: StackFactory, rabbitmq_url: str
) -> None:
    stack = stack_factory(broker_url=rabbitmq_url, queue_type="quorum")
    worker = stack.worker(concurrency=2)
    assert queue_type_on_broker(rabbitmq_url, stack.queue) == "quorum"

    durable, buffered = stack.client(mode="durable"), stack.client(mode="buffered")
    threads = [f"q-{i:02d}" for i in range(40)]
    for version in range(1, 4):
        for i, tid in enumerate(threads):
            client = durable if i % 2 else buffered
            client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)
    buffered.flush(timeout=60)
    durable.flush(timeout=60)
    assert_newest(stack, dict.fromkeys(threads, 3))
    assert ready_messages(rabbitmq_url, stack.queue) == 0
    assert stack.app().dead_letters.count() == 0

    node = node_name(worker)
    assert wait_for_reply(stack.env, ["inspect", "ping"], node) == {"ok": "pong"}
    (queue,) = wait_for_reply(stack.env, ["inspect", "active_queues"], node)
    assert queue["name"] == stack.queue
    assert queue["queue_arguments"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
    }
    assert queue["exchange"]["type"] == "topic"
    log = worker.log_text()
    assert "Direct exchanges are not supported" not in log  # retries can wait in RabbitMQ
    assert "Failed to setup delayed delivery" not in log


def _classic_queue(url: str, queue: str) -> None:
    """``queue`` declared the way Celery declares a classic queue (durable, no arguments)."""
    with Connection(url, connect_timeout=5) as conn:
        channel: Any = conn.default_channel
        channel.queue_declare(queue, durable=True, auto_delete=False)


@pytest.mark.timeout(120)
def test_a_classic_queue_met_with_quorum_settings_is_refused_clearly(
    stack_factory: StackFactory, rabbitmq_url: str, tmp_path: Path
) -> None:
    stack = stack_factory(broker_url=rabbitmq_url, queue_type="quorum")
    _classic_queue(rabbitmq_url, stack.queue)

    # The agent: a typed error, nothing enqueued, the state still its own.
    client = stack.client()
    for attempt in range(2):  # the same answer again (no broken channel left behind)
        with pytest.raises(BrokerMisconfigured) as info:
            client.save_state("t-1", sample_state(f"t-1@{attempt}"), version=attempt + 1)
        assert info.value.queue == stack.queue
        assert "inequivalent arg 'x-queue-type'" in str(info.value)
        assert SWITCH_FIX in str(info.value)
    assert ready_messages(rabbitmq_url, stack.queue) == 0
    assert queue_type_on_broker(rabbitmq_url, stack.queue) == "classic"

    # The worker: one CRITICAL line with the fix, then it ends (no consumer, no loop).
    worker = CeleryWorker(stack.env, directory=tmp_path, concurrency=1)
    try:
        with pytest.raises(CeleryProcessError):
            worker.start()
        assert worker.returncode == 1  # Celery's exit after an unrecoverable error
    finally:
        worker.stop()
    log = worker.log_text()
    assert log.count("CRITICAL/MainProcess] queue ") == 1, log  # one try, no loop
    assert SWITCH_FIX in log
    assert log.count("Unrecoverable error: BrokerMisconfigured") == 1

    # doctor: the queue check fails and says how to switch.
    checks = {c.name: c for c in run_checks(stack.settings, stack.store, stack.app(), timeout=1)}
    check = checks["quorum queue"]
    assert not check.ok
    assert "x-queue-type" in check.detail
    assert check.fix == SWITCH_FIX


@pytest.mark.timeout(120)
def test_a_quorum_queue_met_with_classic_settings_is_refused_clearly(
    stack_factory: StackFactory, rabbitmq_url: str
) -> None:
    quorum = stack_factory(broker_url=rabbitmq_url, queue_type="quorum")
    checks = {
        c.name: c for c in run_checks(quorum.settings, quorum.store, quorum.app(), timeout=1)
    }
    assert checks["quorum queue"].ok, checks["quorum queue"]  # doctor declared it: quorum
    assert queue_type_on_broker(rabbitmq_url, quorum.queue) == "quorum"

    classic = stack_factory(broker_url=rabbitmq_url, queue=quorum.queue)
    with pytest.raises(BrokerMisconfigured, match="current is the value 'quorum'"):
        classic.client().save_state("t-1", sample_state("t-1@1"), version=1)
    checks = {c.name: c for c in run_checks(classic.settings, classic.store, classic.app())}
    assert not checks["classic queue"].ok
    assert ready_messages(rabbitmq_url, quorum.queue) == 0
