"""What the outage tests share: the fault, the stream of hand-offs around it, the checks after.

A test takes the store down (:func:`store_down`), keeps hand-offs flowing
(:func:`start_stream` / :func:`finish_stream`), waits for every outcome without any client
flush (``Fleet.await_outcomes``), checks the worker is neither wedged (:func:`probe_stored`)
nor gone (:func:`healthy`), and prints its reconciled row (:func:`row`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import redis
from agents_persistence import VersionClock
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer

from tests.faults.conftest import Fleet, Report
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger, Reconciliation, snapshot_for
from tests.support.celery_worker import CeleryWorker

__all__ = [
    "CANCELLED",
    "GIVEN_BACK",
    "MAX_CPU_SHARE",
    "RATE",
    "RETRIED",
    "SHORT_RETRIES",
    "SLOW_RATE",
    "STORE_ERROR",
    "UNPUBLISHED",
    "Signal",
    "finish_stream",
    "healthy",
    "probe_stored",
    "retry_span",
    "row",
    "start_stream",
    "store_down",
    "wait_until",
]

Signal = Literal["kill", "stop"]

#: Retry settings whose whole span is a few seconds (see :func:`retry_span`).
SHORT_RETRIES: dict[str, Any] = {
    "task_max_retries": 2,
    "task_retry_backoff_max_seconds": 1.0,
    "retry_attempts": 3,
    "retry_deadline_seconds": 0.5,
    "socket_timeout_seconds": 0.5,
}
#: Hand-offs per second through every test (two producer threads).
RATE = 30.0
#: Hand-offs per second past the retry span. A retry goes to the back of the queue, so a
#: message runs out of retries during the outage only if the workers' failing runs (a
#: second or more each, SIGSTOPped) keep up with the hand-offs queued ahead of it.
SLOW_RATE = 2.0
#: A worker waiting out an outage uses less than this share of one core (a spin uses ~1).
MAX_CPU_SHARE = 0.5
#: Log lines that show the worker's store calls are failing.
STORE_ERROR = "transient store error"
RETRIED = "] retry: Retry in"
GIVEN_BACK = "dead-letter list unavailable"
UNPUBLISHED = "could not publish a retry"
CANCELLED = "cannot be acknowledged after a connection loss"


def retry_span(settings: Settings) -> float:
    """The longest a save retries before it is dead-lettered: each of its runs
    (1 + ``task_max_retries``) makes one store call (a first try, then tenacity up to its
    deadline, whose last try may take a whole socket timeout), with the countdowns between."""
    per_call = settings.socket_timeout_seconds + settings.store_retry_span_seconds
    return (settings.task_max_retries + 1) * per_call + settings.task_retry_span_seconds


def store_down(fleet: Fleet, how: Signal) -> Callable[[], None]:
    """Take the store down; returns what brings it back."""
    server = fleet.store_server
    if how == "stop":
        server.pause()
        return server.resume
    server.kill()

    def restart() -> None:
        server.start()  # same port and directory: the AOF brings the data back

    return restart


def start_stream(
    fleet: Fleet, worker: CeleryWorker, client: CeleryCheckpointer, tag: str,
    rate: float = RATE,
) -> tuple[Stream, Ledger]:  # fmt: skip
    """Hand-offs at ``rate`` until stopped, once the worker is seen storing them."""
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids(tag, 5000), total=10**6, producers=2, rate=rate)
    stream.start()
    stream.wait_for(min(20, int(2 * rate)))
    wait_until(lambda: any(fleet.store.stored_versions(ledger.thread_ids).values()), 60,
          lambda: f"the worker stored nothing before the fault:\n{worker.log_tail()}")  # fmt: skip
    return stream, ledger


def finish_stream(stream: Stream, ledger: Ledger) -> None:
    """Let two seconds' worth of hand-offs through after the recovery, then stop."""
    stream.wait_for(len(ledger) + int(2 * (stream.rate or RATE)))
    stream.stop()
    stream.join()


def probe_stored(
    fleet: Fleet, client: CeleryCheckpointer, ledger: Ledger, clock: VersionClock
) -> float:
    """Hand off one new save and wait until the store holds it (the worker is not wedged);
    returns the seconds it took."""
    tid, version = "probe-after-recovery", clock.next()
    began = time.monotonic()
    client.save_state(tid, snapshot_for(tid, version), version=version)
    ledger.handed_off(tid, version)
    wait_until(lambda: fleet.store.stored_versions([tid])[tid] >= version, 60,
          "a save handed off after the recovery was not stored: the worker is wedged")  # fmt: skip
    return time.monotonic() - began


def wait_until(
    check: Callable[[], bool], timeout: float, failure: str | Callable[[], str]
) -> None:
    """Poll ``check`` (server errors count as not yet) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() < deadline, failure if isinstance(failure, str) else failure()
        time.sleep(0.1)


def healthy(worker: CeleryWorker, pid: int) -> None:
    """The same main process still runs, with a pool (a replaced child may be starting)."""
    assert worker.running, worker.log_tail()
    assert worker.pid == pid
    wait_until(lambda: bool(worker.child_pids()), 30, "the worker has no pool process")


def row(report: Report, fault: str, ledger: Ledger, fleet: Fleet, **extra: Any) -> Reconciliation:
    """Reconcile, print and record the fault's row; nothing lost, resurrected or untyped."""
    result = report(fault, ledger, fleet, **extra)
    result.assert_clean()
    return result
