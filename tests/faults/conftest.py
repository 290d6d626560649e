"""The fault suite's deployment: a store Redis, a broker (Redis or RabbitMQ), real workers.

``fleet_factory(broker=..., store_aof=..., broker_aof=..., **settings)`` starts what a test
breaks: a private redis-server for the store and, for ``broker="redis"``, another one for
the broker (so either can be paused, killed or restarted alone), or a private queue on the
machine's RabbitMQ (``broker="rabbitmq"``, deleted afterwards). Workers are real
``celery -A agents_persistence.tasks worker`` subprocesses (:mod:`tests.support.celery_worker`),
stopped by
PID and process group after the test.

Recovery without the client: :meth:`Fleet.await_outcomes` polls the store, its dead-letter
list and the broker (no ``flush()``, so no re-send), and :func:`worker_cpu_seconds` reads a
worker's CPU time from ``/proc``.

Every test in this package is marked ``faults`` (and ``rabbitmq`` when it uses it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import redis
from agents_persistence import FlushTimeout, PersistenceError, RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer, PersistenceApp, create_app
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from kombu import Connection

from tests.faults.reconcile import (
    Ledger,
    Reconciliation,
    dead_lettered_saves,
    read_dead_letters,
    reconcile,
    write_result,
)
from tests.integration.conftest import (
    RABBITMQ_URL,
    WorkerFactory,
    celery_worker_factory,
    delete_amqp_queue,
)
from tests.support import RedisServer, skip_or_fail
from tests.support.celery_worker import CeleryWorker, settings_env

__all__ = ["Fleet", "celery_worker_factory", "worker_cpu_seconds"]

#: Settings every fault test starts from: short visibility timeout and quick retries, so a
#: crash is recovered from within seconds.
FAULT_SETTINGS: dict[str, Any] = {
    "visibility_timeout_seconds": 4.0,
    "socket_timeout_seconds": 2.0,
    "socket_connect_timeout_seconds": 1.0,
    "retry_attempts": 3,
    "retry_initial_backoff_seconds": 0.05,
    "retry_max_backoff_seconds": 0.5,
    "retry_deadline_seconds": 2.0,
    "task_max_retries": 20,
    "task_retry_backoff_max_seconds": 2.0,
    "task_soft_time_limit_seconds": 20.0,
    "task_time_limit_seconds": 30.0,
    "publish_timeout_seconds": 2.0,
    "publish_max_retries": 2,
    # The client's re-send of hand-offs still pending (a second line of defence) would hide
    # a loss on the broker/worker path; the suite proves that path alone, so it never fires.
    "resend_pending_after_seconds": 3600.0,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this package ``faults`` (and ``rabbitmq`` where it applies)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.faults)
            if "rabbitmq" in item.name:
                item.add_marker(pytest.mark.rabbitmq)


@dataclass
class Fleet:
    """One fault test's deployment.

    Attributes:
        store_server: the store's private redis-server.
        broker_server: the broker's private redis-server (None for RabbitMQ).
        settings: the agent side's settings (the workers get the same as environment).
        env: ``AGENTS_PERSISTENCE_*`` variables for the workers.
        store: a checkpointer of the namespace, for reconciling.
    """

    store_server: RedisServer
    broker_server: RedisServer | None
    settings: Settings
    env: dict[str, str]
    store: RedisCheckpointer
    _worker_factory: WorkerFactory
    workers: list[CeleryWorker] = field(default_factory=list)
    _apps: list[PersistenceApp] = field(default_factory=list)
    clients: list[CeleryCheckpointer] = field(default_factory=list)
    _broker_raw: redis.Redis | None = None

    @property
    def queue(self) -> str:
        return self.settings.queue

    def worker(self, **kwargs: Any) -> CeleryWorker:
        """Start a worker (``concurrency=2`` prefork unless told otherwise)."""
        worker = self._worker_factory(self.env, **kwargs)
        self.workers.append(worker)
        return worker

    def client(self, **kwargs: Any) -> CeleryCheckpointer:
        """A hand-off client on its own app (thread-safe; durable mode by default)."""
        app = create_app(self.settings, store=self.store)
        self._apps.append(app)
        client = CeleryCheckpointer(self.store, app, **kwargs)
        self.clients.append(client)
        return client

    def broker_client(self) -> redis.Redis:
        """A raw client of the Redis broker (one per fleet)."""
        assert self.broker_server is not None, "not a Redis broker"
        if self._broker_raw is None:
            self._broker_raw = self.broker_server.client(socket_timeout=10.0)
        return self._broker_raw

    def broker_depth(self) -> tuple[int, int]:
        """(queued, unacked) messages in the Redis broker; queued counts what sits in
        consumers' in-flight lists too (taken off the queue, not yet recorded)."""
        raw = self.broker_client()
        deadline = time.monotonic() + 60
        while True:  # a broker just restarted answers LOADING until its AOF is read
            try:
                inflight = sum(int(raw.llen(k)) for k in raw.hkeys(INFLIGHT_REGISTRY))
                return int(raw.llen(self.queue)) + inflight, int(raw.hlen("unacked"))
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def dead_letters(self) -> int:
        """Entries in the namespace's dead-letter list."""
        return int(self.store.client.llen(self.store.keys.dead_letters))

    def waiting_in_broker(self) -> int:
        """Messages the broker still holds for the queue: Redis, queued + in flight +
        unacknowledged (retries waiting for their countdown included); RabbitMQ, ready
        (its unacknowledged count is not visible to a client)."""
        if self.broker_server is not None:
            return sum(self.broker_depth())
        with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
            channel: Any = conn.default_channel
            _, ready, _ = channel.queue_declare(self.queue, passive=True)
            return int(ready)

    def without_outcome(self, ledger: Ledger) -> list[str]:
        """Saves ``ledger`` handed off that the store neither holds (at that version or a
        newer one) nor has dead-lettered, as ``thread@version``."""
        held = self.store.stored_versions(ledger.thread_ids)
        dead = dead_lettered_saves(read_dead_letters(self.store))
        return [
            f"{s.thread_id}@{s.version}"
            for s in ledger.saves
            if s.error is None
            and held.get(s.thread_id, 0) < s.version
            and (s.thread_id, s.version) not in dead
        ]

    def await_outcomes(self, ledger: Ledger, timeout: float = 120.0) -> float:
        """Wait, without any client flush (so without its re-send), until every save of
        ``ledger`` is stored, superseded or dead-lettered and the broker holds nothing for
        the queue; returns the seconds it took.

        After ``timeout`` it returns anyway: reconcile then counts what is missing as lost.
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if not self.without_outcome(ledger) and self.waiting_in_broker() == 0:
                    break
            except (PersistenceError, redis.RedisError, OSError):
                pass  # a server still coming back: look again
            time.sleep(0.25)
        return time.monotonic() - started

    def settle(self, client: CeleryCheckpointer, timeout: float = 90.0) -> float:
        """Wait until every save ``client`` handed off is durable (or superseded) and, for a
        Redis broker, until nothing is queued or unacknowledged; returns the seconds it took.

        After ``timeout`` it returns anyway: reconcile then counts what is missing as lost,
        and the caller's check of :meth:`broker_depth` shows what the broker still holds.
        """
        started = time.monotonic()
        with contextlib.suppress(FlushTimeout):
            client.flush(timeout)
        if self.broker_server is not None:
            deadline = started + timeout
            while self.broker_depth() != (0, 0) and time.monotonic() < deadline:
                time.sleep(0.1)
        return time.monotonic() - started

    def close(self) -> None:
        for worker in reversed(self.workers):
            worker.stop()
        for client in self.clients:
            client.close(timeout=5.0)
        for app in self._apps:
            app.close()
        self.store.close()


FleetFactory = Callable[..., Fleet]


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def fleet_factory(
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_factory: WorkerFactory,
) -> Iterator[FleetFactory]:
    """Build fleets: ``factory(broker="redis"|"rabbitmq"|"shared", store_aof=False,
    broker_aof=False, **settings_fields)``."""
    fleets: list[Fleet] = []

    def make(
        *,
        broker: Literal["redis", "rabbitmq", "shared"] = "redis",
        store_aof: bool = False,
        broker_aof: bool = False,
        **overrides: Any,
    ) -> Fleet:
        store_server = redis_server_factory(appendonly=store_aof)
        broker_server: RedisServer | None = None
        if broker == "redis":
            broker_server = redis_server_factory(appendonly=broker_aof)
            broker_url = broker_server.url
        elif broker == "shared":
            broker_server = store_server
            broker_url = store_server.url
        else:
            if not _rabbitmq_answers():
                skip_or_fail(f"no RabbitMQ at {RABBITMQ_URL}")
            broker_url = RABBITMQ_URL
        tag = uuid.uuid4().hex[:8]
        fields: dict[str, Any] = {
            "redis_url": store_server.url,
            "broker_url": broker_url,
            "namespace": f"f-{tag}",
            "queue": f"faults-{tag}",
            **FAULT_SETTINGS,
            **overrides,
        }
        settings = Settings(_env_file=None, **fields)
        fleet = Fleet(
            store_server=store_server,
            broker_server=broker_server,
            settings=settings,
            env=settings_env(**fields),
            store=RedisCheckpointer.from_settings(settings),
            _worker_factory=celery_worker_factory,
        )
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in reversed(fleets):
            fleet.close()
            if fleet.broker_server is None:
                delete_amqp_queue(RABBITMQ_URL, fleet.queue)


Report = Callable[..., Reconciliation]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """``report(fault, ledger, fleet, **extra)``: reconcile against the fleet's store, print
    the counts line (even without ``-s``), write them under ``tests/faults/results/``, and
    return them. ``resent`` (the clients' re-sends of pending hand-offs) is always 0 with
    the suite's settings; it is shown so that a reader can check."""

    def run(fault: str, ledger: Ledger, fleet: Fleet, **extra: Any) -> Reconciliation:
        result = reconcile(fault, ledger, fleet.store)
        result.extra.update(extra)
        result.extra["resent"] = sum(c.resent for c in fleet.clients)
        write_result(result)
        with capsys.disabled():
            print(f"\n{result.line()}")
        return result

    return run


def _cpu_ticks(pid: int, *, with_reaped_children: bool) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0  # gone between the listing and the read
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[11:15] are utime, stime, cutime, cstime (clock ticks).
    used = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used


def worker_cpu_seconds(worker: CeleryWorker) -> float:
    """CPU seconds used so far by ``worker``: its main process, the pool children it has
    reaped (replaced ones, say after a hard time limit) and the live ones."""
    ticks = _cpu_ticks(worker.pid, with_reaped_children=True)
    ticks += sum(_cpu_ticks(pid, with_reaped_children=False) for pid in worker.child_pids())
    return ticks / os.sysconf("SC_CLK_TCK")


def hold_store_writes(fleet: Fleet, milliseconds: int) -> None:
    """CLIENT PAUSE WRITE on the store: saves in progress hang that long (tasks stay running)
    while reads and the broker go on."""
    fleet.store_server.client().client_pause(milliseconds, all=False)
