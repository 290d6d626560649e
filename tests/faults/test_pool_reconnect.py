"""A pool child dies, then the broker restarts: the worker reconnects instead of dying.

Celery 5.7's prefork pool marks a child whose exit it handled (``_sentinel_poll = None``) and
can keep it listed until its next maintenance; the consumer's restart after a lost broker
connection then registered ``None`` with the event loop and the worker died with
``Unrecoverable error: ValueError('file descriptor is None')`` (found by the chaos run:
a SIGKILLed pool child, or Celery terminating a running task on the connection loss,
followed by a broker restart). The worker runs
:class:`agents_persistence.tasks.worker.pool.TaskPool`, which skips such a child.

The crash needs the child's exit handled before the child can be reaped (a short race), so
this run does not always reach it: with Celery's stock pool it passed once in one try here.
``tests/unit/test_pool.py`` builds that state and tells the two pools apart; this test
checks the whole path around it (the death handled, tasks terminated on the connection
loss, reconnect, fresh saves, nothing lost) with the pool the worker really runs.
"""

from __future__ import annotations

import functools

import pytest
from agents_persistence import VersionClock

from tests.faults.conftest import FleetFactory, Report, hold_store_writes
from tests.faults.outage import (
    CANCELLED,
    finish_stream,
    healthy,
    probe_stored,
    row,
    start_stream,
    wait_until,
)
from tests.support.celery_worker import CeleryWorker

#: What the worker logs once it has joined a dead child (Celery's supervisor).
CHILD_JOINED = "exited with 'signal 9 (SIGKILL)'"
#: What the worker logs when its consumer has (re)connected to the broker.
CONNECTED = "Connected to "
#: The crash this test guards against.
CRASH = "file descriptor is None"
ROUNDS = 3


def _replaced(worker: CeleryWorker, victim: int) -> bool:
    children = worker.child_pids()
    return len(children) == 2 and victim not in children


@pytest.mark.timeout(300)
def test_pool_child_killed_then_broker_restarted(
    fleet_factory: FleetFactory, report: Report
) -> None:
    """Three rounds of: SIGKILL one pool child and wait until the worker has handled its
    exit and replaced it; hold the store so both slots are mid-task (Celery terminates
    those on the connection loss: more children exit while the consumer restarts); SIGKILL
    the broker's redis-server (AOF) and restart it. The same worker process reconnects each
    time, stores a save handed off afterwards, and no save is lost."""
    fleet = fleet_factory(broker="redis", broker_aof=True)
    assert fleet.broker_server is not None
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    clock = VersionClock()
    stream, ledger = start_stream(fleet, worker, client, "poolrc")
    worker.wait_for_log(CONNECTED, 30)
    terminated = 0
    for done in range(1, ROUNDS + 1):
        victim = worker.kill_child()
        worker.wait_for_log(CHILD_JOINED, 60, count=done)
        wait_until(
            functools.partial(_replaced, worker, victim),
            60, lambda: f"the killed child was not replaced:\n{worker.log_tail()}",
        )  # fmt: skip
        received = worker.log_count("received")
        hold_store_writes(fleet, 3000)
        worker.wait_for_log("received", 30, count=received + 1)  # a task is mid-write
        fleet.broker_server.kill()
        fleet.broker_server.start()
        worker.wait_for_log(CONNECTED, 90, count=done + 1)
        assert CRASH not in worker.log_text(), worker.log_tail()
        healthy(worker, pid)
        probe_stored(fleet, client, ledger, clock)
        terminated = worker.log_count(CANCELLED)
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger)
    result = row(
        report, "pool child killed, then broker restarted (AOF)", ledger, fleet,
        rounds=ROUNDS, terminated_on_loss=terminated, settle_s=round(settle, 1),
    )  # fmt: skip
    assert result.lost == 0
    assert CRASH not in worker.log_text(), worker.log_tail()
    assert "Unrecoverable error" not in worker.log_text(), worker.log_tail()
    healthy(worker, pid)
    assert fleet.broker_depth() == (0, 0)
