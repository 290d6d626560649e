"""Fixtures for integration tests: real worker and beat subprocesses over private servers.

* ``celery_worker_factory`` / ``celery_beat_factory``: start ``celery -A agents_persistence.tasks
worker|beat``
  subprocesses (see :mod:`tests.support.celery_worker`); each is stopped by PID and process
  group after the test, whatever happened.
* ``stack_factory`` / ``stack``: a private redis-server (store and, by default, broker), a
  fresh namespace and queue, the :class:`Settings` for both sides and the matching
  environment for the subprocesses, and helpers to start workers and beat on it.
* ``rabbitmq_url``: the RabbitMQ broker (skipped, or failed under ``CI=true``, if absent).

Every test here is marked ``integration``.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from agents_persistence.config.settings import Settings
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from kombu import Connection

from tests.support import RedisServer, skip_or_fail
from tests.support.celery_worker import CeleryBeat, CeleryWorker, settings_env

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

WorkerFactory = Callable[..., CeleryWorker]
BeatFactory = Callable[..., CeleryBeat]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this package ``integration`` (and ``rabbitmq`` where it applies)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
            if "rabbitmq_url" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.rabbitmq)


# -- processes --------------------------------------------------------------------------------
@pytest.fixture
def celery_worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start workers: ``factory(env, concurrency=2, pool="prefork", queues=None,
    extra_args=(), name=None)``; returns a ready :class:`CeleryWorker`. All are stopped
    (SIGTERM, then SIGKILL of the group) after the test."""
    started: list[CeleryWorker] = []

    def start(env: dict[str, str], **kwargs: Any) -> CeleryWorker:
        worker = CeleryWorker(env, directory=tmp_path, **kwargs)
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        for worker in reversed(started):
            worker.stop()


@pytest.fixture
def celery_beat_factory(tmp_path: Path) -> Iterator[BeatFactory]:
    """Start beat processes: ``factory(env, extra_args=(), name=None)``; stopped after the
    test."""
    started: list[CeleryBeat] = []

    def start(env: dict[str, str], **kwargs: Any) -> CeleryBeat:
        beat = CeleryBeat(env, directory=tmp_path, **kwargs)
        started.append(beat)
        return beat.start()

    try:
        yield start
    finally:
        for beat in reversed(started):
            beat.stop()


# -- brokers ----------------------------------------------------------------------------------
def _tcp_open(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 5672), timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq_url() -> str:
    """The RabbitMQ broker's URL; skips (fails under CI=true) if it does not answer."""
    if not _tcp_open(RABBITMQ_URL):
        skip_or_fail(f"no RabbitMQ at {RABBITMQ_URL}")
    return RABBITMQ_URL


def delete_amqp_queue(url: str, queue: str) -> None:
    """Delete ``queue``, the direct exchange Celery declared under the same name and, for
    a quorum queue, its topic exchange (``<queue>.quorum``)."""
    with Connection(url, connect_timeout=5) as conn:
        channel: Any = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
        channel.exchange_delete(f"{queue}.quorum")


# -- the stack --------------------------------------------------------------------------------
@dataclass
class Stack:
    """One test's deployment: a private Redis, settings, and helpers to run processes.

    Attributes:
        server: the private redis-server (the store; the broker unless ``broker_url`` set).
        fields: the :class:`Settings` fields both sides use.
        settings: ``Settings(**fields)`` for the agent side.
        env: ``AGENTS_PERSISTENCE_*`` variables carrying ``fields`` to the subprocesses.
        store: a checkpointer of the namespace (for reads and direct writes).
        broker: a raw client of the Redis broker (None for another broker).
    """

    server: RedisServer
    fields: dict[str, Any]
    settings: Settings
    env: dict[str, str]
    store: RedisCheckpointer
    broker: redis.Redis | None
    _worker_factory: WorkerFactory
    _beat_factory: BeatFactory
    _clients: list[CeleryCheckpointer] = field(default_factory=list)
    _apps: list[PersistenceApp] = field(default_factory=list)
    _processes: list[CeleryWorker | CeleryBeat] = field(default_factory=list)

    @property
    def queue(self) -> str:
        """The queue of this stack's hand-offs."""
        return self.settings.queue

    def worker(self, **kwargs: Any) -> CeleryWorker:
        """Start a worker on this stack (``concurrency``, ``pool``, ``extra_args``, ...)."""
        worker = self._worker_factory(self.env, **kwargs)
        self._processes.append(worker)
        return worker

    def beat(self, **kwargs: Any) -> CeleryBeat:
        """Start beat on this stack."""
        beat = self._beat_factory(self.env, **kwargs)
        self._processes.append(beat)
        return beat

    def app(self) -> PersistenceApp:
        """A producer-side Celery app with this stack's settings and store."""
        app = create_app(self.settings, store=self.store)
        self._apps.append(app)
        return app

    def client(self, **kwargs: Any) -> CeleryCheckpointer:
        """A hand-off client (``mode="durable" | "buffered"``); closed after the test."""
        client = CeleryCheckpointer(self.store, self.app(), **kwargs)
        self._clients.append(client)
        return client

    def queued(self) -> int:
        """Messages waiting in the Redis broker's queue."""
        assert self.broker is not None, "not a Redis broker"
        return int(self.broker.llen(self.queue))

    def unacked(self) -> int:
        """Messages delivered to a worker and not acknowledged yet (Redis broker)."""
        assert self.broker is not None, "not a Redis broker"
        return int(self.broker.hlen("unacked"))

    def wait_idle(self, timeout: float = 30.0, *, settle: float = 0.2) -> None:
        """Block until the Redis broker's queue is empty and nothing is unacknowledged, for
        ``settle`` seconds in a row (a message a worker has popped but not yet registered as
        unacknowledged is briefly in neither place)."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            if self.queued() or self.unacked():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= settle:
                return
            if now > deadline:
                raise AssertionError(
                    f"broker not idle after {timeout}s: {self.queued()} queued, "
                    f"{self.unacked()} unacked"
                )
            time.sleep(0.01)

    def wait_dead_letters(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Block until the namespace holds ``count`` dead letters; returns them."""
        letters = self.app().dead_letters
        deadline = time.monotonic() + timeout
        while letters.count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{letters.count()} dead letters, want {count}")
            time.sleep(0.02)
        return letters.list()

    def close(self) -> None:
        """Stop this stack's processes, then close its clients and apps."""
        for proc in reversed(self._processes):
            proc.stop()
        for client in self._clients:
            client.close(timeout=5.0)
        for app in self._apps:
            app.close()
        self.store.close()


StackFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory(
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_factory: WorkerFactory,
    celery_beat_factory: BeatFactory,
) -> Iterator[StackFactory]:
    """Build stacks: ``factory(**settings_fields)``, e.g. ``ttl_seconds=0.3`` or
    ``broker_url=rabbitmq_url``. Each gets a private redis-server, a ``t-<uuid8>``
    namespace and a queue of its own; an AMQP queue is deleted afterwards."""
    stacks: list[Stack] = []

    def make(**overrides: Any) -> Stack:
        server = redis_server_factory()
        tag = uuid.uuid4().hex[:8]
        fields: dict[str, Any] = {
            "redis_url": server.url,
            "namespace": f"t-{tag}",
            "queue": f"q-{tag}",
            "socket_timeout_seconds": 5.0,
            **overrides,
        }
        settings = Settings(_env_file=None, **fields)
        broker_url = settings.broker.get_secret_value()
        broker = server.client() if broker_url == server.url else None
        stack = Stack(
            server=server,
            fields=fields,
            settings=settings,
            env=settings_env(**fields),
            store=RedisCheckpointer.from_settings(settings),
            broker=broker,
            _worker_factory=celery_worker_factory,
            _beat_factory=celery_beat_factory,
        )
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in reversed(stacks):
            stack.close()
            url = stack.settings.broker.get_secret_value()
            if url.startswith(("amqp", "pyamqp")):
                delete_amqp_queue(url, stack.queue)


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    """A stack with default settings on a private redis-server."""
    return stack_factory()
