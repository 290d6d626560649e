"""Faults 1-3: workers that die (SIGKILL of the group, of one pool child) or are told to stop.

Each test drives a stream of hand-offs from several producer threads, breaks the worker
mid-stream, lets a worker take over, and reconciles every save against the store.
"""

from __future__ import annotations

import time

import pytest
import redis
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY

from tests.faults.conftest import FleetFactory, Report, hold_store_writes
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger
from tests.support.celery_worker import CeleryWorker


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_sigkill_worker_group(fleet_factory: FleetFactory, report: Report, broker: str) -> None:
    """Fault 1: SIGKILL of a worker's whole process group (main process and pool), three
    times mid-stream, while a second worker keeps running. The first two times a new worker
    replaces it; the last time the survivor must take the dead worker's messages back on its
    own (Redis: once the visibility timeout passed; RabbitMQ: when the connection drops)."""
    fleet = fleet_factory(broker=broker)
    survivor = fleet.worker(concurrency=1)
    victim = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("kill", 1000), total=2400, producers=4, rate=150)
    stream.start()
    for mark, replace in ((600, True), (1200, True), (2000, False)):
        stream.wait_for(mark)
        victim.kill_group()
        if replace:
            time.sleep(0.5)  # messages pile up meanwhile
            victim = fleet.worker(concurrency=2)
    stream.join()
    recovery = fleet.settle(client)
    result = report(
        f"1 sigkill worker group ({broker})", ledger, fleet, kills=3,
        settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert result.handed_off == 2400
    assert survivor.running
    if fleet.broker_server is not None:
        assert fleet.broker_depth() == (0, 0), "messages left in the broker"


def _kill_inside_pop_window(
    worker: CeleryWorker, broker: redis.Redis, dead: set[bytes | str], timeout: float = 30.0
) -> int:
    """SIGKILL ``worker``'s group at a moment when it holds a message it has taken off the
    queue but not yet recorded as unacknowledged (the window in which kombu's own Redis
    transport loses it); returns how many messages were in that state. ``dead``: in-flight
    lists of workers killed before (not this one's); this one's are added to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.pause()
        mine = [k for k in broker.hkeys(INFLIGHT_REGISTRY) if k not in dead]
        held = sum(int(broker.llen(k)) for k in mine)
        if held:
            worker.kill_group()
            dead.update(mine)
            return held
        worker.resume()
        time.sleep(0.005)
    raise AssertionError(f"never caught {worker.name} between pop and unacked record")


@pytest.mark.timeout(180)
def test_sigkill_between_pop_and_unacked_record(
    fleet_factory: FleetFactory, report: Report
) -> None:
    """Fault 1, the narrow case: SIGKILL of the worker group while it holds a message it
    has popped but not yet recorded as unacknowledged, three times. Those messages come back
    from the dead worker's in-flight list once its lease expires."""
    fleet = fleet_factory(broker="redis")
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("pop", 3000), total=2000, producers=4, rate=200)
    stream.start()
    caught = []
    dead: set[bytes | str] = set()
    for mark in (400, 900, 1400):
        stream.wait_for(mark)
        caught.append(_kill_inside_pop_window(worker, fleet.broker_client(), dead))
        worker = fleet.worker(concurrency=2)
    stream.join()
    recovery = fleet.settle(client)
    given_back = sum(
        int(line.split("gave back ")[1].split()[0])
        for w in fleet.workers
        for line in w.log_text().splitlines()
        if "a dead consumer had taken" in line
    )
    result = report(
        "1b sigkill between pop and unacked record", ledger, fleet,
        in_flight_at_kill=sum(caught), given_back=given_back,
        settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert all(caught)
    assert given_back == sum(caught)
    assert fleet.broker_depth() == (0, 0)


@pytest.mark.timeout(180)
def test_sigkill_pool_child(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 2: SIGKILL of one pool child while it runs a save, three times. The main process
    sees the child die (WorkerLostError) and, with reject_on_worker_lost, gives the message
    back; another child applies it."""
    fleet = fleet_factory(broker="redis")
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("child", 1000), total=2000, producers=4, rate=150)
    stream.start()
    killed = []
    for mark in (400, 900, 1400):
        stream.wait_for(mark)
        hold_store_writes(fleet, 1500)
        time.sleep(0.5)  # both children are now inside a save
        killed.append(worker.kill_child())
    stream.join()
    recovery = fleet.settle(client)
    lost_workers = worker.log_count("WorkerLostError")
    result = report(
        "2 sigkill one pool child", ledger, fleet, children_killed=len(killed),
        worker_lost_errors=lost_workers, settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert worker.running
    assert lost_workers >= len(killed), worker.log_tail()
    assert fleet.broker_depth() == (0, 0)
    assert fleet.dead_letters() == 0


@pytest.mark.timeout(180)
def test_sigterm_with_prefetched_and_running(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 3: SIGTERM (warm shutdown) of a worker holding running and prefetched messages,
    then a new worker. Running saves finish, prefetched ones go back to the queue, the new
    worker applies them."""
    fleet = fleet_factory(broker="redis", worker_prefetch_multiplier=4)
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("term", 1000), total=2000, producers=4, rate=150)
    stream.start()
    held: list[tuple[int, int]] = []
    for mark in (500, 1300):
        stream.wait_for(mark)
        hold_store_writes(fleet, 2000)
        time.sleep(0.7)  # 2 running (hung in the store), up to 6 more prefetched
        held.append(fleet.broker_depth())
        worker.terminate()
        code = worker.wait(timeout=30)
        assert code == 0, worker.log_tail()
        worker = fleet.worker(concurrency=2)
    stream.join()
    recovery = fleet.settle(client)
    result = report(
        "3 sigterm with prefetched+running", ledger, fleet, restarts=len(held),
        unacked_at_sigterm=",".join(str(u) for _, u in held), settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert all(unacked >= 3 for _, unacked in held), held  # running + prefetched were held
    assert fleet.broker_depth() == (0, 0)
    assert fleet.dead_letters() == 0


@pytest.mark.timeout(180)
def test_visibility_timeout_shorter_than_task(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 8: saves that run longer than the visibility timeout (the store holds writes for
    5 s; the timeout is 2 s). The broker hands the same messages to the other worker too:
    duplicates happen, the versioned writes absorb them, the final state is right."""
    fleet = fleet_factory(broker="redis", visibility_timeout_seconds=2.0)
    workers = [fleet.worker(concurrency=2), fleet.worker(concurrency=2)]
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("vt", 800), total=1600, producers=4, rate=150)
    stream.start()
    for mark in (300, 1000):
        stream.wait_for(mark)
        hold_store_writes(fleet, 5000)
    stream.join()
    recovery = fleet.settle(client)
    duplicates = sum(w.log_count("'outcome': 'duplicate'") for w in workers)
    stale = sum(w.log_count("'outcome': 'stale'") for w in workers)
    result = report(
        "8 visibility timeout < task run", ledger, fleet, duplicate_runs=duplicates,
        stale_runs=stale, settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert duplicates + stale > 0, "no message was delivered twice"
    assert fleet.broker_depth() == (0, 0)
