"""Store outages the rest of the suite did not try, each reconciled without any client flush.

The workers' path is proved on its own: the client's re-send is off (``FAULT_SETTINGS``) and
no test calls ``flush()`` to recover; each waits (:meth:`Fleet.await_outcomes`) until every
hand-off is stored, superseded or dead-lettered and the broker holds nothing, with a
deadline, then reconciles (``lost`` must be 0) and prints its row.

Store outages (``test_store_outage``): SIGKILL (the store keeps an AOF and is started again)
or SIGSTOP (then SIGCONT), for 1 s, 15 s, 60 s (``slow``) and past the whole retry span (the
retry settings shortened so the span is a few seconds, the store down three times that).
Hand-offs go on through the outage. Each length runs twice, the second run with the other
signal, broker and mode, so every length meets SIGKILL and SIGSTOP, the Redis broker and
RabbitMQ, durable and buffered hand-offs::

    length      run 1                      run 2
    1 s         kill, redis, durable       stop, rabbitmq, buffered
    15 s        kill, rabbitmq, buffered   stop, redis, durable
    past span   kill, redis, buffered      stop, rabbitmq, durable
    60 s        kill, rabbitmq, durable    stop, redis, buffered      (slow)

For outages of 15 s and more the worker must not spin (its CPU over the outage, main process
and pool, stays below :data:`MAX_CPU_SHARE` of one core) nor wedge (a save handed off after
the recovery is stored).

Then: the broker restarting while the store is down (the retries' own publishes fail), the
dead-letter list failing while the store is half up (OOM under ``noeviction``, or a
read-only replica), a task hitting its soft and its hard time limit mid-write (writes held
with ``CLIENT PAUSE WRITE``), and a store flapping 20 times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import pytest
import redis
from agents_persistence import VersionClock
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer
from agents_persistence.tasks.protocol.names import SAVE_TASK

from tests.faults.conftest import (
    Fleet,
    FleetFactory,
    Report,
    hold_store_writes,
    worker_cpu_seconds,
)
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger, Reconciliation, read_dead_letters, snapshot_for
from tests.support import free_port
from tests.support.celery_worker import CeleryWorker

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
    _wait(lambda: any(fleet.store.stored_versions(ledger.thread_ids).values()), 60,
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
    _wait(lambda: fleet.store.stored_versions([tid])[tid] >= version, 60,
          "a save handed off after the recovery was not stored: the worker is wedged")  # fmt: skip
    return time.monotonic() - began


def _wait(check: Callable[[], bool], timeout: float, failure: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() < deadline, failure if isinstance(failure, str) else failure()
        time.sleep(0.1)


def _healthy(worker: CeleryWorker, pid: int) -> None:
    """The same main process still runs, with a pool (a replaced child may be starting)."""
    assert worker.running, worker.log_tail()
    assert worker.pid == pid
    _wait(lambda: bool(worker.child_pids()), 30, "the worker has no pool process")


def _row(report: Report, fault: str, ledger: Ledger, fleet: Fleet, **extra: Any) -> Reconciliation:
    result = report(fault, ledger, fleet, **extra)
    result.assert_clean()
    return result


# -- store outages ----------------------------------------------------------------------------
OUTAGES: dict[str, float | None] = {"1s": 1.0, "15s": 15.0, "60s": 60.0, "past-span": None}


def _case(how: Signal, length: str, broker: str, mode: str, timeout: float) -> Any:
    marks = [pytest.mark.timeout(timeout)] + ([pytest.mark.slow] if length == "60s" else [])
    return pytest.param(how, length, broker, mode, marks=marks,
                        id=f"{how}-{length}-{broker}-{mode}")  # fmt: skip


CASES = [
    _case("kill", "1s", "redis", "durable", 150),
    _case("stop", "1s", "rabbitmq", "buffered", 150),
    _case("kill", "15s", "rabbitmq", "buffered", 180),
    _case("stop", "15s", "redis", "durable", 180),
    _case("kill", "past-span", "redis", "buffered", 180),
    _case("stop", "past-span", "rabbitmq", "durable", 180),
    _case("kill", "60s", "rabbitmq", "durable", 240),
    _case("stop", "60s", "redis", "buffered", 240),
]


@pytest.mark.parametrize(("how", "length", "broker", "mode"), CASES)
def test_store_outage(  # noqa: PLR0917 - the fixtures, then the four dimensions of a case
    fleet_factory: FleetFactory, report: Report, how: Signal, length: str, broker: str,
    mode: str,
) -> None:  # fmt: skip
    """The store goes down mid-stream and comes back; hand-offs go on meanwhile; every one
    ends stored or dead-lettered, the worker stays cool and keeps working."""
    past_span = length == "past-span"
    overrides = dict(SHORT_RETRIES) if past_span else {}
    fleet = fleet_factory(broker=broker, store_aof=how == "kill", handoff_mode=mode,
                          **overrides)  # fmt: skip
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    outage = OUTAGES[length] or 3 * retry_span(fleet.settings)
    stream, ledger = start_stream(fleet, worker, client, f"{how}-{length}",
                                  SLOW_RATE if past_span else RATE)  # fmt: skip

    began = time.monotonic()
    bring_back = store_down(fleet, how)
    at_start = stream.ledger.ok_count
    cpu_share: float | None = None
    if outage >= 15:
        worker.wait_for_log(STORE_ERROR, timeout=outage / 2)  # the outage reached the worker
        cpu_from, cpu_at = worker_cpu_seconds(worker), time.monotonic()
        time.sleep(max(0.0, began + outage - time.monotonic()))
        if past_span:
            # Messages out of retries while the dead-letter list is down too are given back.
            worker.wait_for_log(GIVEN_BACK, timeout=120, count=2)
        cpu_share = (worker_cpu_seconds(worker) - cpu_from) / (time.monotonic() - cpu_at)
    else:
        time.sleep(max(0.0, began + outage - time.monotonic()))
    during = stream.ledger.ok_count - at_start
    down_for = time.monotonic() - began
    bring_back()
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    probe = probe_stored(fleet, client, ledger, stream.clock)

    result = _row(
        report, f"outage store {how} {length} ({broker}, {mode})", ledger, fleet,
        down_s=round(down_for, 1), handed_off_during=during, settle_s=round(settle, 1),
        probe_s=round(probe, 2), cpu_share=None if cpu_share is None else round(cpu_share, 3),
        retries=worker.log_count(RETRIED), given_back=worker.log_count(GIVEN_BACK),
        max_handoff_s=round(stream.max_latency, 3),
    )  # fmt: skip
    assert during > 0, "no hand-off during the outage"
    assert result.failed == 0, "a hand-off failed although only the store was down"
    _healthy(worker, pid)
    if cpu_share is not None:
        assert cpu_share < MAX_CPU_SHARE, f"the worker spun: {cpu_share:.2f} of a core"
    if outage >= 15:
        assert worker.log_count(RETRIED) > 0, "no task retried: the outage did not bite"
    assert fleet.waiting_in_broker() == 0


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

    result = _row(
        report, "outage store down while the broker restarts (redis)", ledger, fleet,
        retry_unpublished=worker.log_count(UNPUBLISHED), cancelled=worker.log_count(CANCELLED),
        retries=worker.log_count(RETRIED), settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    met = worker.log_count(UNPUBLISHED) + worker.log_count(CANCELLED)
    assert met > 0, f"the broker's outage met no task in flight:\n{worker.log_tail()}"
    assert result.failed > 0, "no hand-off met the broker's outage"
    assert {s.error for s in ledger.saves if s.error} == {"HandOffError"}
    _healthy(worker, pid)
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
    _wait(lambda: len(_dead_threads(fleet) & set(bad)) == len(bad), 60,
          "the bad messages were not all dead-lettered")  # fmt: skip
    probe = probe_stored(fleet, client, ledger, stream.clock)

    _row(
        report, f"outage dead-letter list failing, store half up ({how})", ledger, fleet,
        given_back=given_back_while_down, bad_dead_lettered=len(_dead_threads(fleet) & set(bad)),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    _healthy(worker, pid)
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

    result = _row(
        report, f"outage time limit mid-write ({limit}, {broker}, {mode})", ledger, fleet,
        limit_hits=worker.log_count(marker), retries=worker.log_count(RETRIED),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    assert result.failed == 0
    _healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0


# -- a flapping store -------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_flapping_store(fleet_factory: FleetFactory, report: Report) -> None:
    """20 outages in a row, 2 s down and 2 s up, alternately SIGKILL (AOF) and SIGSTOP,
    with hand-offs all along (RabbitMQ, buffered)."""
    fleet = fleet_factory(broker="rabbitmq", store_aof=True, handoff_mode="buffered")
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    stream, ledger = start_stream(fleet, worker, client, "flap")

    cpu_from, cpu_at = worker_cpu_seconds(worker), time.monotonic()
    for cycle in range(20):
        bring_back = store_down(fleet, "kill" if cycle % 2 else "stop")
        time.sleep(2.0)
        bring_back()
        time.sleep(2.0)
    cpu_share = (worker_cpu_seconds(worker) - cpu_from) / (time.monotonic() - cpu_at)
    finish_stream(stream, ledger)
    settle = fleet.await_outcomes(ledger, timeout=120)
    probe = probe_stored(fleet, client, ledger, stream.clock)

    result = _row(
        report, "outage store flapping x20 (rabbitmq, buffered)", ledger, fleet,
        retries=worker.log_count(RETRIED), cpu_share=round(cpu_share, 3),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    assert result.failed == 0
    assert cpu_share < MAX_CPU_SHARE
    assert worker.log_count(RETRIED) > 0
    _healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0
