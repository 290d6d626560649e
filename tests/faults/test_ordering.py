"""Faults 9-10: out-of-order and duplicated delivery at scale; deletes racing saves."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
from agents_persistence import VersionClock
from agents_persistence.tasks import CeleryCheckpointer

from tests.faults.conftest import FleetFactory, Report, hold_store_writes
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger, snapshot_for

SAVES = 10_000
PRODUCERS = 500
THREADS = 1_000


def _shuffled_producer(
    *,
    client: CeleryCheckpointer,
    ledger: Ledger,
    clock: VersionClock,
    threads: list[str],
    saves: int,
    seed: int,
    duplicates: list[int],
) -> None:
    """Hand off ``saves`` saves in blocks of 4 versions of one thread, each block in a
    shuffled order (newest first, sometimes), and one save in 5 twice."""
    rng = random.Random(seed)
    done = 0
    while done < saves:
        tid = rng.choice(threads)
        block = [clock.next() for _ in range(min(4, saves - done))]
        rng.shuffle(block)
        for version in block:
            state = snapshot_for(tid, version)
            try:
                client.save_state(tid, state, version=version)
                if rng.random() < 0.2:
                    client.save_state(tid, state, version=version)
                    duplicates[seed] += 1
            except Exception as exc:
                ledger.failed(tid, version, exc)
            else:
                ledger.handed_off(tid, version)
        done += len(block)


@pytest.mark.timeout(300)
def test_out_of_order_and_duplicates_at_scale(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 9: 10,000 saves from 500 producer threads over 1,000 thread ids, each thread's
    versions handed off out of order and one save in five twice, applied by two workers
    (four processes) in whatever order the broker hands them out."""
    fleet = fleet_factory(broker="redis", worker_prefetch_multiplier=4)
    workers = [fleet.worker(concurrency=2), fleet.worker(concurrency=2)]
    client = fleet.client()
    ledger = Ledger()
    clock = VersionClock()
    threads = thread_ids("order", THREADS)
    duplicates = [0] * PRODUCERS
    per_producer = SAVES // PRODUCERS
    producers = [
        threading.Thread(
            target=_shuffled_producer,
            kwargs={
                "client": client,
                "ledger": ledger,
                "clock": clock,
                "threads": threads,
                "saves": per_producer,
                "seed": i,
                "duplicates": duplicates,
            },
            daemon=True,
        )
        for i in range(PRODUCERS)
    ]
    began = time.monotonic()
    for t in producers:
        t.start()
    for t in producers:
        t.join(240)
    assert not any(t.is_alive() for t in producers)
    handoff_s = time.monotonic() - began
    recovery = fleet.settle(client, timeout=180)
    # A save_state task logs its outcome; a save_states task (a durable group) the count
    # of each outcome among its entries.
    outcomes = {
        kind: sum(
            w.log_count(f"'outcome': '{kind}'")
            + sum(int(n) for n in re.findall(rf"'{kind}': (\d+)", w.log_text()))
            for w in workers
        )
        for kind in ("written", "duplicate", "stale")
    }
    result = report(
        "9 out-of-order + duplicates at scale", ledger, fleet, producers=PRODUCERS,
        duplicate_handoffs=sum(duplicates), handoff_s=round(handoff_s, 1),
        settle_s=round(recovery, 1), **{f"runs_{k}": v for k, v in outcomes.items()},
    )  # fmt: skip
    result.assert_clean()
    assert result.handed_off == SAVES
    assert outcomes["stale"] > 0, "no save arrived after a newer one"
    assert outcomes["duplicate"] > 0, "no duplicate delivery was absorbed"
    assert fleet.broker_depth() == (0, 0)


@pytest.mark.timeout(240)
def test_deletes_race_queued_and_retrying_saves(
    fleet_factory: FleetFactory, report: Report
) -> None:
    """Fault 10: threads are deleted while their older saves wait in the queue (the store
    holds writes, a backlog builds) and while they sit in Celery retries (the store was
    SIGSTOPped), and continuously at random. No deleted thread comes back, unless a save
    newer than its delete was handed off (then that save is what it holds)."""
    fleet = fleet_factory(broker="redis")
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    threads = thread_ids("del", 400)
    stream = Stream(client, ledger, threads, total=3000, producers=4, rate=150)
    rng = random.Random(7)
    delete_errors: list[BaseException] = []

    def delete(tid: str) -> None:
        try:
            result = client.delete_thread(tid)
        except Exception as exc:  # a typed StoreUnavailable is fine; anything else is not
            delete_errors.append(exc)
        else:
            ledger.deleted(tid, result.current_version)

    stop = threading.Event()

    def deleter() -> None:
        while not stop.wait(0.1):
            delete(rng.choice(threads))

    stream.start()
    background = threading.Thread(target=deleter, daemon=True)
    background.start()
    # Queued: hold writes so a backlog builds, then delete threads with saves in it.
    stream.wait_for(600)
    hold_store_writes(fleet, 2500)
    time.sleep(2.0)
    queued = {s.thread_id for s in ledger.saves[-250:]}
    for tid in queued:
        delete(tid)
    # Retrying: freeze the store until saves give up and go to Celery retries, then
    # delete their threads while the retries wait out their countdown.
    stream.wait_for(1600)
    fleet.store_server.pause()
    time.sleep(6.0)
    retrying = {s.thread_id for s in ledger.saves[-300:]}
    fleet.store_server.resume()
    for tid in retrying:
        delete(tid)
    stream.join()
    stop.set()
    background.join(10)
    recovery = fleet.settle(client)
    result = report(
        "10 deletes racing queued+retrying saves", ledger, fleet,
        deleted_while_queued=len(queued), deleted_while_retrying=len(retrying),
        task_retries=worker.log_count("] retry: Retry in"), settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert [
        type(e).__name__ for e in delete_errors if type(e).__name__ != "StoreUnavailable"
    ] == []
    assert result.deletes > 300
    assert result.stayed_deleted > 50
    assert fleet.broker_depth() == (0, 0)
