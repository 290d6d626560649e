"""Fault 6c: the Redis broker restarts under a worker with remote control on.

The worker listens on the remote-control (pidbox) channel beside its task channel. When the
broker dies while a task is running (its message unacknowledged) and another slot is free
(the task channel's ``BLMOVE`` outstanding), kombu notices the loss on the pidbox socket
first; closing the task channel then fails half-way, kombu detaches the transport, and the
retried close asked for a new connection pool of a channel without a connection:
``AttributeError`` and "Unrecoverable error", the worker exited. The Redis transport now
reports a connection error there (``Channel._connparams``), and the worker reconnects.

The test runs the shipped app (task events on) and ``tests.faults.worker_apps:events_off``
(task events off, no event dispatcher). With the guard taken out, the worker exited in 3 of 3
runs with events off and in 1 of 3 with them on.
"""

from __future__ import annotations

import time

import pytest
from agents_persistence import AgentStateSnapshot

from tests.faults.conftest import Fleet, FleetFactory, Report, hold_store_writes
from tests.faults.reconcile import Ledger, snapshot_for
from tests.support.celery_cli import node_name, wait_for_reply
from tests.support.celery_worker import CeleryWorker


def _hand_off(fleet: Fleet, ledger: Ledger, thread_id: str, version: int) -> None:
    client = fleet.clients[0]
    state: AgentStateSnapshot = snapshot_for(thread_id, version)
    try:
        client.save_state(thread_id, state, version=version)
    except Exception as exc:
        ledger.failed(thread_id, version, exc)
        raise
    ledger.handed_off(thread_id, version)


def _wait_running(fleet: Fleet, worker: CeleryWorker, timeout: float = 30.0) -> None:
    """Until the worker holds one message unacknowledged (its task is running)."""
    worker.wait_until(lambda: fleet.broker_depth() == (0, 1), timeout, "one unacked message")


def _wait_settled(fleet: Fleet, worker: CeleryWorker, ledger: Ledger) -> None:
    """Until every save of ``ledger`` is stored and the broker holds nothing."""

    def settled() -> bool:
        held = fleet.store.stored_versions(ledger.thread_ids)
        stored = all(held.get(s.thread_id, 0) >= s.version for s in ledger.saves)
        return stored and fleet.broker_depth() == (0, 0)

    worker.wait_until(settled, 90, "every save stored, nothing in the broker")


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "app",
    ["agents_persistence.tasks", "tests.faults.worker_apps:events_off"],
    ids=["events", "no-events"],
)
def test_worker_survives_broker_restarts_with_remote_control(
    fleet_factory: FleetFactory, report: Report, app: str
) -> None:
    """Twice: a save runs (held in the store, unacknowledged) on a worker with one slot
    free when the broker's redis-server (AOF) is SIGKILLed and restarted on the same port.
    The same worker process answers ``celery inspect ping`` after each restart, and every
    save handed off is stored."""
    fleet = fleet_factory(broker="redis", broker_aof=True)
    assert fleet.broker_server is not None
    worker = fleet.worker(concurrency=2, app=app)
    pid = worker.pid
    node = node_name(worker)
    fleet.client()
    ledger = Ledger()
    assert wait_for_reply(fleet.env, ["inspect", "ping"], node) == {"ok": "pong"}
    _hand_off(fleet, ledger, "before", 1)
    lost_connection = 0
    for restart in (1, 2):
        _wait_settled(fleet, worker, ledger)
        # The save hangs in the store for 5 s: unacknowledged when the broker dies.
        hold_store_writes(fleet, 5000)
        _hand_off(fleet, ledger, f"held-{restart}", 1)
        _wait_running(fleet, worker)
        fleet.broker_server.kill()
        time.sleep(1.0)
        fleet.broker_server.start()
        worker.wait_for_log("Connection to broker lost", count=restart, timeout=60)
        lost_connection += 1
        assert wait_for_reply(fleet.env, ["inspect", "ping"], node, timeout=90) == {
            "ok": "pong"
        }, f"restart {restart}"
        assert worker.running, worker.log_tail()
        assert worker.pid == pid
        _hand_off(fleet, ledger, f"after-{restart}", 1)
    settle = fleet.settle(fleet.clients[0], timeout=90)
    result = report(
        f"6c broker restarted under remote control ({app})", ledger, fleet,
        restarts=lost_connection, settle_s=round(settle, 1),
        unrecoverable=worker.log_count("Unrecoverable error"),
    )  # fmt: skip
    result.assert_clean()
    assert result.durable == len(ledger) == 5
    assert worker.log_count("Unrecoverable error") == 0, worker.log_tail()
    assert worker.running
    assert worker.pid == pid
    assert fleet.broker_depth() == (0, 0)
