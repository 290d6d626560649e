"""Faults on a RabbitMQ quorum queue (``queue_type = "quorum"``), reconciled like the rest.

- The store killed mid-stream (AOF, started again): tasks retry with their countdown, the
  retries wait in RabbitMQ's delayed queues (Celery's native delayed delivery, quorum queues
  themselves) rather than in a worker, and every hand-off ends stored: lost = 0, no client
  flush (its re-send is off, ``FAULT_SETTINGS``).
- A worker's whole process group SIGKILLed by PID three times while it holds batches, a
  second worker running on: RabbitMQ gives the dead consumer's unacknowledged messages
  back (each message a victim had received and not ended, by its log, is run by another
  worker afterwards), lost = 0, nothing left in the queue.
- RabbitMQ unreachable, then hung, at hand-off (a TCP proxy): HandOffError within the bound
  or handed off, the worker reconnects to its quorum queue, lost = 0.
"""

from __future__ import annotations

import re
import time
from functools import partial

import pytest

from tests.faults.conftest import FleetFactory, Report, hold_store_writes
from tests.faults.outage import (
    RETRIED,
    finish_stream,
    healthy,
    probe_stored,
    row,
    start_stream,
    store_down,
    wait_until,
)
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger
from tests.faults.tcpproxy import TcpProxy
from tests.integration.conftest import RABBITMQ_URL
from tests.support.celery_worker import CeleryWorker
from tests.support.rabbitmq import delayed_messages, queue_type_on_broker

_RECEIVED = re.compile(r"Task [\w.]+\[([0-9a-f-]+)\] received")
_FINISHED = re.compile(r"Task [\w.]+\[([0-9a-f-]+)\] (?:succeeded|retry|raised)")


def _finished(worker: CeleryWorker) -> set[str]:
    """Ids of the task messages ``worker`` ran to an end (its INFO lines)."""
    return set(_FINISHED.findall(worker.log_text()))


def _holds_any(worker: CeleryWorker) -> bool:
    return bool(_unfinished(worker))


def _unfinished(worker: CeleryWorker) -> set[str]:
    """Ids of the task messages ``worker`` received (running or prefetched) and has not
    ended: what it holds unacknowledged."""
    return set(_RECEIVED.findall(worker.log_text())) - _finished(worker)


@pytest.mark.timeout(240)
def test_store_outage_retries_wait_in_rabbitmq_quorum(
    fleet_factory: FleetFactory, report: Report
) -> None:
    fleet = fleet_factory(broker="rabbitmq", queue_type="quorum", store_aof=True)
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    assert queue_type_on_broker(RABBITMQ_URL, fleet.queue) == "quorum"
    client = fleet.client()
    stream, ledger = start_stream(fleet, worker, client, "quorum-outage")

    began = time.monotonic()
    bring_back = store_down(fleet, "kill")
    at_start = stream.ledger.ok_count
    worker.wait_for_log(RETRIED, timeout=60, count=4)  # re-published with a countdown
    delayed: list[int] = []

    def retries_wait_in_rabbitmq() -> bool:
        delayed.append(delayed_messages(RABBITMQ_URL))
        return delayed[-1] > 0

    wait_until(
        retries_wait_in_rabbitmq,
        60,
        lambda: f"no retry seen waiting in RabbitMQ's delayed queues:\n{worker.log_tail()}",
    )
    during = stream.ledger.ok_count - at_start
    down_for = time.monotonic() - began
    bring_back()
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    probe = probe_stored(fleet, client, ledger, stream.clock)

    result = row(
        report, "outage store kill (rabbitmq quorum, durable)", ledger, fleet,
        down_s=round(down_for, 1), handed_off_during=during, settle_s=round(settle, 1),
        probe_s=round(probe, 2), retries=worker.log_count(RETRIED),
        delayed_seen=max(delayed), dead_letters=fleet.dead_letters(),
    )  # fmt: skip
    assert during > 0, "no hand-off during the outage"
    assert result.failed == 0, "a hand-off failed although only the store was down"
    assert fleet.dead_letters() == 0, "a retry ran out although the store came back"
    healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0
    wait_until(lambda: delayed_messages(RABBITMQ_URL) == 0, 30, "a retry still waits")


@pytest.mark.timeout(300)
def test_sigkill_worker_group_mid_batch_rabbitmq_quorum(
    fleet_factory: FleetFactory, report: Report
) -> None:
    """Fault 1 on a quorum queue, buffered hand-offs (batch messages): the victim's group
    SIGKILLed by PID three times while its saves hang in the store (so it holds batches it
    has not acknowledged); twice a new worker replaces it, the last time the survivor takes
    the messages back alone."""
    fleet = fleet_factory(broker="rabbitmq", queue_type="quorum", handoff_mode="buffered")
    survivor = fleet.worker(concurrency=1)
    victim = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("qkill", 1000), total=2400, producers=4, rate=150)
    stream.start()
    killed: list[CeleryWorker] = []
    for mark, replace in ((600, True), (1200, True), (2000, False)):
        stream.wait_for(mark)
        hold_store_writes(fleet, 1500)  # saves in progress hang: their batches stay unacked
        victim.wait_until(partial(_holds_any, victim), 30, "a batch in the victim")
        victim.kill_group()
        killed.append(victim)
        if replace:
            victim = fleet.worker(concurrency=2)
    stream.join()
    settle = fleet.await_outcomes(ledger, timeout=120)
    held_by = {task: w for w in killed for task in _unfinished(w)}
    held = set(held_by)

    def ran_after_kill() -> set[str]:
        # A message a killed worker held, run to its end by another worker (which may be
        # a victim killed later: it ran the message before its own kill).
        return {t for t, holder in held_by.items() for w in fleet.workers
                if w is not holder and t in _finished(w)}  # fmt: skip

    # The store can hold every thread's newest version before a redelivered message (its
    # snapshots superseded) has run: wait for the runs themselves, not only the outcomes.
    deadline = time.monotonic() + 120
    while not held <= (ran_after := ran_after_kill()) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = row(
        report, "1 sigkill worker group mid-batch (rabbitmq quorum, buffered)", ledger, fleet,
        kills=3, held_at_kill=len(held), redelivered_and_run=len(held & ran_after),
        settle_s=round(settle, 1), dead_letters=fleet.dead_letters(),
    )  # fmt: skip
    assert held, "no victim held a message when it was killed"
    assert held <= ran_after, f"never run after the kill: {sorted(held - ran_after)[:5]}"
    assert result.handed_off == 2400
    assert result.failed == 0
    assert survivor.running
    assert fleet.waiting_in_broker() == 0
    assert fleet.dead_letters() == 0


@pytest.mark.timeout(240)
def test_broker_down_at_handoff_rabbitmq_quorum(
    fleet_factory: FleetFactory, report: Report
) -> None:
    """Fault 7 on a quorum queue: RabbitMQ, behind a TCP proxy, refuses connections for 3 s,
    later hangs for 6 s, for agents and worker alike. Each save_state hands off or raises
    HandOffError within ``handoff_timeout``; the worker reconnects (declaring its queue
    again) and stores everything handed off: lost = 0."""
    proxy = TcpProxy(("127.0.0.1", 5672)).start()
    try:
        fleet = fleet_factory(
            broker="rabbitmq", queue_type="quorum", publish_timeout_seconds=1.0,
            broker_url=proxy.url("amqp://guest:guest@127.0.0.1:{port}//"),
        )  # fmt: skip
        worker = fleet.worker(concurrency=2)
        client = fleet.client()
        ledger = Ledger()
        stream = Stream(client, ledger, thread_ids("qdown", 600), total=1200, producers=4,
                        rate=100)  # fmt: skip
        stream.start()
        failures: dict[str, int] = {}
        for mark, kind, seconds in ((300, "refused", 3.0), (700, "hung", 6.0)):
            stream.wait_for(mark)
            before = _failed(ledger)
            if kind == "refused":
                proxy.down()
            else:
                proxy.blackhole()
            time.sleep(seconds)  # the outage's length; the counts are read after it ends
            proxy.up()
            failures[kind] = _failed(ledger) - before
        stream.join()
        settle = fleet.await_outcomes(ledger, timeout=120)
        result = row(
            report, "7 broker down at hand-off (rabbitmq quorum)", ledger, fleet,
            failed_refused=failures["refused"], failed_hung=failures["hung"],
            max_handoff_s=round(stream.max_latency, 2),
            bound_s=round(client.handoff_timeout, 1), settle_s=round(settle, 1),
        )  # fmt: skip
        assert stream.max_latency <= client.handoff_timeout
        assert failures["refused"] > 0, failures
        assert failures["hung"] > 0, failures
        assert {s.error for s in ledger.saves if s.error} == {"HandOffError"}
        assert result.durable > 0
        assert worker.running, worker.log_tail()
        assert worker.log_count("BrokerMisconfigured") == 0
        assert fleet.waiting_in_broker() == 0
    finally:
        proxy.close()


def _failed(ledger: Ledger) -> int:
    return sum(1 for s in ledger.saves if s.error is not None)
