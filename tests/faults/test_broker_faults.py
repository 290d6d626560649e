"""Faults 6-7: the broker restarts mid-stream, or is down when the agent hands off."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Fleet, FleetFactory, Report, hold_store_writes
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger
from tests.faults.tcpproxy import TcpProxy


@pytest.mark.timeout(180)
def test_broker_restarted(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 6: the broker's redis-server (AOF, fsync always) is SIGKILLed and restarted on
    the same port, twice: once with a backlog queued (the workers held up by the store),
    once while messages flow. Queued messages survive; the same worker processes reconnect
    and drain them; hand-offs during the outage fail to the caller with HandOffError."""
    fleet = fleet_factory(broker="redis", broker_aof=True)
    assert fleet.broker_server is not None
    worker = fleet.worker(concurrency=2)
    pid = worker.pid
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("bkr", 1000), total=2000, producers=4, rate=150)
    stream.start()
    stream.wait_for(500)
    hold_store_writes(fleet, 4000)
    time.sleep(2.0)  # a backlog builds; the worker's two slots hang in the store
    queued_at_kill = fleet.broker_depth()
    fleet.broker_server.kill()
    time.sleep(1.5)
    fleet.broker_server.start()
    queued_after = fleet.broker_depth()
    stream.wait_for(1400)
    fleet.broker_server.kill()  # now while messages flow
    time.sleep(1.5)
    fleet.broker_server.start()
    stream.join()
    recovery = fleet.settle(client)
    result = report(
        "6 broker redis restarted (AOF)", ledger, fleet,
        queued_at_kill=queued_at_kill[0], queued_after_restart=queued_after[0],
        settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    # Every message queued or unacknowledged at the kill is back (a hand-off accepted in
    # the instant between the count and the kill may add one).
    assert queued_after[0] >= queued_at_kill[0]
    assert queued_after[1] == queued_at_kill[1]
    assert queued_at_kill[0] > 50
    assert result.failed > 0, "no hand-off met the outage"
    assert worker.running
    assert worker.pid == pid
    assert fleet.broker_depth() == (0, 0)


@pytest.mark.timeout(120)
def test_broker_down_while_acks_fail(fleet_factory: FleetFactory, report: Report) -> None:
    """Fault 6, the worker's side: the broker goes away while both of the worker's slots are
    busy (the store holds writes), so the worker has no credit, its pop socket is paused,
    and the acks of the two saves fail when they finish. The worker must still notice the
    lost connection, reconnect when the broker is back, and the two saves come back from
    unacked (kombu alone left the worker waiting forever). Remote control is off here: its
    pidbox socket would notice the outage at once."""
    fleet = fleet_factory(broker="redis", broker_aof=True)
    assert fleet.broker_server is not None
    worker = fleet.worker(concurrency=2, app="tests.faults.worker_apps:no_remote_control")
    client = fleet.client()
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("ack", 1000), total=600, producers=2, rate=100)
    stream.start()
    stream.wait_for(200)
    hold_store_writes(fleet, 1500)
    time.sleep(0.5)  # both slots hang in the store: no credit left
    fleet.broker_server.stop()
    time.sleep(3.0)  # the saves finish meanwhile; their acks fail
    fleet.broker_server.start()
    stream.join()
    recovery = fleet.settle(client, timeout=40)
    result = report(
        "6b broker down while acks fail", ledger, fleet,
        failed_acks=worker.log_count("Couldn't ack"),
        reconnects=worker.log_count("Connection to broker lost"), settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert worker.log_count("Couldn't ack") > 0, "no ack met the outage"
    assert worker.log_count("Connection to broker lost") > 0
    assert fleet.broker_depth() == (0, 0)


def _failed(ledger: Ledger) -> int:
    return sum(1 for s in ledger.saves if s.error is not None)


def _outage(fleet: Fleet, proxy: TcpProxy | None, kind: str) -> Callable[[], None]:
    """Break the broker (``refused``: the server is gone; ``hung``: it stops answering);
    returns the call that brings it back."""
    if proxy is not None:
        if kind == "refused":
            proxy.down()
        else:
            proxy.blackhole()
        return proxy.up
    assert fleet.broker_server is not None
    server = fleet.broker_server
    if kind == "refused":
        server.stop()

        def restart() -> None:
            server.start()

        return restart
    server.pause()
    return server.resume


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("broker", "write_through"),
    [("redis", False), ("rabbitmq", False), ("redis", True)],
    ids=["redis", "rabbitmq", "redis-write-through"],
)
def test_broker_down_at_handoff(
    fleet_factory: FleetFactory, report: Report, broker: str, write_through: bool
) -> None:
    """Fault 7: the broker refuses connections for 3 s, later hangs for 6 s (Redis: the
    server stopped, then SIGSTOPped; RabbitMQ: a TCP proxy in front of it resets, then
    blackholes). Each save_state either hands off, or raises HandOffError within
    ``handoff_timeout``; with write-through configured it writes to the store instead and
    never fails. Nothing is dropped silently."""
    proxy: TcpProxy | None = None
    overrides: dict[str, object] = {
        "write_through_on_broker_error": write_through,
        "publish_timeout_seconds": 1.0,
    }
    if broker == "rabbitmq":
        proxy = TcpProxy(("127.0.0.1", 5672)).start()
        overrides["broker_url"] = proxy.url("amqp://guest:guest@127.0.0.1:{port}//")
    try:
        fleet = fleet_factory(
            broker="rabbitmq" if proxy else "redis", broker_aof=True, **overrides
        )
        fleet.worker(concurrency=2)
        client = fleet.client()
        ledger = Ledger()
        stream = Stream(client, ledger, thread_ids("down", 600), total=1200, producers=4,
                        rate=100)  # fmt: skip
        stream.start()
        failures: dict[str, int] = {}
        for mark, kind, seconds in ((300, "refused", 3.0), (700, "hung", 6.0)):
            stream.wait_for(mark)
            before = _failed(ledger) + client.written_through
            restore = _outage(fleet, proxy, kind)
            time.sleep(seconds)
            restore()
            time.sleep(0.2)
            failures[kind] = _failed(ledger) + client.written_through - before
        stream.join()
        recovery = fleet.settle(client)
        result = report(
            f"7 broker down at hand-off ({broker}{', write-through' if write_through else ''})",
            ledger, fleet, written_through=client.written_through,
            failed_refused=failures["refused"], failed_hung=failures["hung"],
            max_handoff_s=round(stream.max_latency, 2),
            bound_s=round(client.handoff_timeout, 1), settle_s=round(recovery, 1),
        )  # fmt: skip
        result.assert_clean()
        assert stream.max_latency <= client.handoff_timeout
        assert failures["refused"] > 0, failures
        assert failures["hung"] > 0, failures
        if write_through:
            assert result.failed == 0
            assert client.written_through > 0
        else:
            assert result.failed > 0, "no hand-off met the outage"
            assert {s.error for s in ledger.saves if s.error} == {"HandOffError"}
    finally:
        if proxy is not None:
            proxy.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_broker_down_under_a_durable_group(
    fleet_factory: FleetFactory, report: Report, broker: str
) -> None:
    """Fault 7 under group commit: 20 agent threads hand off flat out in durable mode, so a
    publish is always in flight with callers queued behind it, when the broker refuses
    connections and later hangs, each time until a group has failed. Every caller either
    gets its save acknowledged, and the snapshot is then durable (reconciled: none lost), or
    gets HandOffError; a failed message fails its whole group and the callers queued behind
    it, so no caller waits for more than the publish in flight and its own group's."""
    proxy: TcpProxy | None = None
    overrides: dict[str, object] = {"publish_timeout_seconds": 1.0}
    if broker == "rabbitmq":
        proxy = TcpProxy(("127.0.0.1", 5672)).start()
        overrides["broker_url"] = proxy.url("amqp://guest:guest@127.0.0.1:{port}//")
    try:
        fleet = fleet_factory(
            broker="rabbitmq" if proxy else "redis", broker_aof=True, **overrides
        )
        fleet.worker(concurrency=2)
        client = fleet.client(mode="durable")
        ledger = Ledger()
        stream = Stream(client, ledger, thread_ids("grp", 2000), total=6000, producers=20)
        stream.start()
        failures: dict[str, int] = {}
        for mark, kind in ((1000, "refused"), (3000, "hung")):
            stream.wait_for(mark)
            before = _failed(ledger)
            restore = _outage(fleet, proxy, kind)
            # Down until the group in flight has failed (the publish retry bound at most).
            deadline = time.monotonic() + 2 * client.handoff_timeout + 10
            while _failed(ledger) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            restore()
            failures[kind] = _failed(ledger) - before
        stream.join()
        recovery = fleet.settle(client)
        group = client._group
        assert group is not None
        result = report(
            f"7c broker down under a durable group ({broker})", ledger, fleet,
            failed_refused=failures["refused"], failed_hung=failures["hung"],
            messages=client.published_messages, snapshots=client.published_snapshots,
            max_handoff_s=round(stream.max_latency, 2),
            bound_s=round(2 * client.handoff_timeout, 1), settle_s=round(recovery, 1),
        )  # fmt: skip
        result.assert_clean()
        assert failures["refused"] > 0, failures
        assert failures["hung"] > 0, failures
        assert {s.error for s in ledger.saves if s.error} == {"HandOffError"}
        # The saves shared messages: far fewer messages than snapshots.
        assert client.published_messages < client.published_snapshots // 2
        assert stream.max_latency <= 2 * client.handoff_timeout
        assert (group.busy, group.queued) == (False, 0)
    finally:
        if proxy is not None:
            proxy.close()
