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
and pool, stays below ``MAX_CPU_SHARE`` of one core) nor wedge (a save handed off after the
recovery is stored). Then a store flapping 20 times. The faults around a single write (the
broker restarting during an outage, a half-up store, time limits) are in
``test_write_faults.py``; what both share is in :mod:`tests.faults.outage`.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import FleetFactory, Report, worker_cpu_seconds
from tests.faults.outage import (
    GIVEN_BACK,
    MAX_CPU_SHARE,
    RATE,
    RETRIED,
    SHORT_RETRIES,
    SLOW_RATE,
    STORE_ERROR,
    Signal,
    finish_stream,
    healthy,
    probe_stored,
    retry_span,
    row,
    start_stream,
    store_down,
)

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

    result = row(
        report, f"outage store {how} {length} ({broker}, {mode})", ledger, fleet,
        down_s=round(down_for, 1), handed_off_during=during, settle_s=round(settle, 1),
        probe_s=round(probe, 2), cpu_share=None if cpu_share is None else round(cpu_share, 3),
        retries=worker.log_count(RETRIED), given_back=worker.log_count(GIVEN_BACK),
        max_handoff_s=round(stream.max_latency, 3),
    )  # fmt: skip
    assert during > 0, "no hand-off during the outage"
    assert result.failed == 0, "a hand-off failed although only the store was down"
    healthy(worker, pid)
    if cpu_share is not None:
        assert cpu_share < MAX_CPU_SHARE, f"the worker spun: {cpu_share:.2f} of a core"
    if outage >= 15:
        assert worker.log_count(RETRIED) > 0, "no task retried: the outage did not bite"
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

    result = row(
        report, "outage store flapping x20 (rabbitmq, buffered)", ledger, fleet,
        retries=worker.log_count(RETRIED), cpu_share=round(cpu_share, 3),
        settle_s=round(settle, 1), probe_s=round(probe, 2),
    )  # fmt: skip
    assert result.failed == 0
    assert cpu_share < MAX_CPU_SHARE
    assert worker.log_count(RETRIED) > 0
    healthy(worker, pid)
    assert fleet.waiting_in_broker() == 0
