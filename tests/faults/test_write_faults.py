"""Faults around one write, each reconciled without any client flush (see test_outages.py).

- The store down while the broker restarts: a retry's own publish can fail (its message is
  then given back), though Celery's main process, losing its connection too, usually
  cancels the running tasks first (their messages come back from unacked).
- The dead-letter list failing while the store is half up (OOM under ``noeviction``, or a
  read-only replica): bad messages and saves out of retries are given back, never acked.
- A task hitting its soft, and separately its hard, time limit mid-write (writes held with
  ``CLIENT PAUSE WRITE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import pytest
from agents_persistence.tasks import CeleryCheckpointer
from agents_persistence.tasks.protocol.names import SAVE_TASK

from tests.faults.conftest import Fleet, FleetFactory, Report, hold_store_writes
from tests.faults.outage import (
    CANCELLED,
    GIVEN_BACK,
    RETRIED,
    SHORT_RETRIES,
    SLOW_RATE,
    UNPUBLISHED,
    finish_stream,
    healthy,
    probe_stored,
    row,
    start_stream,
    store_down,
    wait_until,
)
from tests.faults.reconcile import read_dead_letters
from tests.support import free_port


# -- the broker restarts while the store is down ------------------------------------------------
@pytest.mark.timeout(180)
def test_store_down_while_the_broker_restarts(fleet_factory: FleetFactory, report: Report) -> None:
    """The store is SIGKILLed, so saves fail fast and retry; then the Redis broker (AOF) is
    SIGKILLed and restarted while they do. A retry that cannot be published gives its message
    back; Celery's main process, seeing its own connection drop, cancels running tasks
    (their messages come back from unacked), which usually wins the race. Either way the
    broker's outage meets work in flight, and once both are back everything lands."""
    fleet = fleet_factory(broker="redis", broker_aof=True, store_aof=True)
    assert fleet.broker_server is not None
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    stream, ledger = start_stream(fleet, worker, client, "brk")

    bring_back = store_down(fleet, "kill")
    worker.wait_for_log(RETRIED, timeout=30, count=5)  # retries are being published
    fleet.broker_server.kill()
    time.sleep(3.0)  # the fault's length: hand-offs fail to the caller meanwhile
    fleet.broker_server.start()
    worker.wait_for_log("Connected to ", timeout=60, count=2)  # the worker reconnected
    time.sleep(2.0)  # the store stays down a while after the broker is back
    bring_back()
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    probe = probe_stored(fleet, client, ledger, stream.clock)

    result = row(
        report, "outage store down while the broker restarts (redis)", ledger, fleet,
        retry_unpublished=worker.log_count(UNPUBLISHED), cancelled=worker.log_count(CANCELLED),
        retries=worker.log_count(RETRIED), settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    met = worker.log_count(UNPUBLISHED) + worker.log_count(CANCELLED)
    assert met > 0, f"the broker's outage met no task in flight:\n{worker.log_tail()}"
    assert result.failed > 0, "no hand-off met the broker's outage"
    assert {s.error for s in ledger.saves if s.error} == {"HandOffError"}
    healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0


# -- the dead-letter list fails while the store is half up --------------------------------------
def _half_up(fleet: Fleet, how: Literal["oom", "readonly"]) -> Callable[[], None]:
    """Make the store refuse writes but answer reads; returns what heals it.

    ``oom``: ``maxmemory`` under what it holds, ``noeviction`` (writes get OOM errors, not
    retried: the save is dead-lettered, whose push fails too). ``readonly``: a replica of a
    primary that does not exist (writes get READONLY, retried as an outage until the
    retries run out, then the dead-letter push fails the same way).
    """
    admin = fleet.store_server.client()
    if how == "readonly":
        admin.replicaof("127.0.0.1", str(free_port()))

        def heal_readonly() -> None:
            admin.replicaof("no", "one")

        return heal_readonly
    for i in range(64):  # 1 MB the namespace does not own, so nothing the test reads
        admin.set(f"filler:{i}", b"x" * 16384)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 512 * 1024)

    def heal_oom() -> None:
        admin.config_set("maxmemory", 0)

    return heal_oom


def _publish_bad_saves(client: CeleryCheckpointer, n: int) -> list[str]:
    """``n`` save messages the worker must dead-letter (their state is not JSON)."""
    tids = [f"bad-{i}" for i in range(n)]
    for i, tid in enumerate(tids):
        kwargs = {"namespace": client.namespace, "thread_id": tid, "version": i + 1,
                  "state": "{not json", "saved_at_ms": 1}  # fmt: skip
        client.app.send_task(SAVE_TASK, kwargs=kwargs, queue=client.settings.queue)
    return tids


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["oom", "readonly"])
def test_dead_letter_list_failing_while_the_store_is_half_up(
    fleet_factory: FleetFactory, report: Report, how: Literal["oom", "readonly"]
) -> None:
    """Bad messages, and saves whose retries ran out, try to dead-letter while the store
    refuses writes: each is given back, never acked. Once the store takes writes again,
    every save is stored or dead-lettered and every bad message dead-lettered."""
    fleet = fleet_factory(broker="redis", **SHORT_RETRIES)
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    stream, ledger = start_stream(fleet, worker, client, f"half-{how}", SLOW_RATE)

    heal = _half_up(fleet, how)
    bad = _publish_bad_saves(client, 5)
    worker.wait_for_log(GIVEN_BACK, timeout=90, count=10)
    given_back_while_down = worker.log_count(GIVEN_BACK)
    heal()
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    wait_until(lambda: len(_dead_threads(fleet) & set(bad)) == len(bad), 60,
          "the bad messages were not all dead-lettered")  # fmt: skip
    probe = probe_stored(fleet, client, ledger, stream.clock)

    row(
        report, f"outage dead-letter list failing, store half up ({how})", ledger, fleet,
        given_back=given_back_while_down, bad_dead_lettered=len(_dead_threads(fleet) & set(bad)),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0


def _dead_threads(fleet: Fleet) -> set[str]:
    return {
        entry.get("kwargs", {}).get("thread_id", "") for entry in read_dead_letters(fleet.store)
    }


# -- time limits mid-write --------------------------------------------------------------------
LIMITS: dict[str, dict[str, Any]] = {
    # One store call can outlast the soft limit: a first try of a whole socket timeout, then
    # tenacity's tries (the settings only check deadline + socket timeout < soft limit).
    "soft": {"retry_deadline_seconds": 0.5, "socket_timeout_seconds": 2.4,
             "task_soft_time_limit_seconds": 3.0, "task_time_limit_seconds": 30.0},
    # No retry left after the soft limit: the dead-letter push, held too, meets the hard one.
    "hard": {"retry_deadline_seconds": 0.5, "socket_timeout_seconds": 2.4,
             "task_soft_time_limit_seconds": 3.0, "task_time_limit_seconds": 4.5,
             "task_max_retries": 0, "visibility_timeout_seconds": 10.0},
}  # fmt: skip


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("limit", "broker", "mode"),
    [("soft", "rabbitmq", "durable"), ("hard", "redis", "buffered")],
    ids=["soft-rabbitmq-durable", "hard-redis-buffered"],
)
def test_time_limit_mid_write(
    fleet_factory: FleetFactory, report: Report, limit: str, broker: str, mode: str
) -> None:
    """Writes are held (CLIENT PAUSE WRITE) longer than the limit: the soft limit interrupts
    the write and takes the retry path; the hard limit kills the pool process mid-write
    and its message goes back (acks_on_timeout is off). Nothing is lost."""
    fleet = fleet_factory(broker=broker, handoff_mode=mode, **LIMITS[limit])
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    stream, ledger = start_stream(fleet, worker, client, f"limit-{limit}", SLOW_RATE)
    marker = "Soft time limit (3.0s) exceeded" if limit == "soft" else "Hard time limit (4.5s)"

    hold = 8.0 if limit == "soft" else 12.0
    hold_store_writes(fleet, int(hold * 1000))
    worker.wait_for_log(marker, timeout=hold + 10)
    time.sleep(hold)  # the pause ends on its own meanwhile
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    probe = probe_stored(fleet, client, ledger, stream.clock)

    result = row(
        report, f"outage time limit mid-write ({limit}, {broker}, {mode})", ledger, fleet,
        limit_hits=worker.log_count(marker), retries=worker.log_count(RETRIED),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    assert result.failed == 0
    healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0
