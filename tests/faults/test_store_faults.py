"""Faults 4-5: the store's Redis stops answering (SIGSTOP) or crashes and comes back (AOF).

Hand-offs only touch the broker, so the agent keeps handing off at full speed through the
outage; the workers' saves retry (tenacity in the core, then Celery retries with backoff)
and land once the store is back.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FleetFactory, Report
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger


@pytest.mark.timeout(180)
def test_store_paused_longer_than_a_retry(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 4: the store's redis-server is SIGSTOPped for 8 s (one store call gives up after
    ~2 s), then resumed. Saves retry across the pause; nothing is dead-lettered."""
    fleet = fleet_factory(broker="redis")
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("pause", 1000), total=2000, producers=4, rate=150)
    stream.start()
    stream.wait_for(500)
    fleet.store_server.pause()
    pause_began = time.monotonic()
    stream.wait_for(1300)  # hand-offs go on while the store is frozen
    time.sleep(max(0.0, 8.0 - (time.monotonic() - pause_began)))
    paused_for = time.monotonic() - pause_began
    fleet.store_server.resume()
    stream.join()
    recovery = fleet.settle(client)
    retries = worker.log_count("] retry: Retry in")
    result = report(
        "4 store paused (SIGSTOP)", ledger, fleet, paused_s=round(paused_for, 1),
        task_retries=retries, max_handoff_s=round(stream.max_latency, 3),
        settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert retries > 0, "no save retried: the pause did not bite"
    assert stream.max_latency < 2.0, "the agent waited on the store"
    assert fleet.dead_letters() == 0
    assert fleet.broker_depth() == (0, 0)


@pytest.mark.timeout(180)
def test_store_killed_and_restarted(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 5: the store's redis-server (AOF, fsync always) is SIGKILLed mid-stream and
    restarted 3 s later on the same port. What was written survives; the scripts are loaded
    again; queued and retrying saves land."""
    fleet = fleet_factory(broker="redis", store_aof=True)
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("crash", 1000), total=2000, producers=4, rate=150)
    stream.start()
    stream.wait_for(500)
    # Everything durable so far must survive the crash (the AOF has it).
    settled_before = fleet.store.stored_versions(ledger.thread_ids)
    fleet.store_server.kill()
    time.sleep(3.0)
    fleet.store_server.start()
    after = fleet.store.stored_versions(list(settled_before))
    regressed = [t for t, v in settled_before.items() if after[t] < v]
    stream.join()
    recovery = fleet.settle(client)
    retries = worker.log_count("] retry: Retry in")
    result = report(
        "5 store killed+restarted (AOF)", ledger, fleet, task_retries=retries,
        regressed_by_crash=len(regressed), max_handoff_s=round(stream.max_latency, 3),
        settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert regressed == []
    assert fleet.dead_letters() == 0
    assert fleet.broker_depth() == (0, 0)
