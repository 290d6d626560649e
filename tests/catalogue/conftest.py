"""Fixtures of the bad-input catalogue (docs/bad-input.md).

``agent``: an agent-side client handing off to a private server that is both store and
broker, with no worker: what reaches the broker stays in the queue, so a test can tell that
a refused input enqueued nothing.

``served``: one real worker (``celery -A agents_persistence.tasks worker``) on a private
redis-server for the
whole package, for what reaches a worker (messages, stored data).

Both store a bystander thread first; every test checks it is untouched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer, PersistenceApp, create_app
from kombu import Connection, Producer

from tests.support import RedisServer, find_redis_server, sample_state, skip_or_fail
from tests.support.celery_worker import CeleryWorker, settings_env

BYSTANDER = "bystander"


@dataclass
class Agent:
    """An agent-side client, its store, and a raw client of the server."""

    settings: Settings
    store: RedisCheckpointer
    client: CeleryCheckpointer
    raw: redis.Redis
    bystander: AgentStateSnapshot

    def queued(self) -> int:
        """Messages waiting in the queue (nobody consumes them here)."""
        return int(self.raw.llen(self.settings.queue))

    def assert_untouched(self) -> None:
        """Nothing was enqueued, and the bystander thread still holds its state."""
        assert self.queued() == 0
        assert self.store.load_state(BYSTANDER) == self.bystander
        assert self.store.list_threads() == [BYSTANDER]

    def assert_still_serving(self) -> None:
        """A good save is still handed off."""
        before = self.queued()
        self.client.save_state("after", sample_state("after"))
        assert self.queued() == before + 1


@pytest.fixture
def agent(redis_server_factory: Callable[..., RedisServer]) -> Iterator[Agent]:
    """A :class:`CeleryCheckpointer` whose store and broker is a private redis-server."""
    server = redis_server_factory()
    settings = Settings(
        redis_url=server.url,
        namespace=f"cat-{uuid.uuid4().hex[:8]}",
        queue=f"cat-{uuid.uuid4().hex[:8]}",
    )
    store = RedisCheckpointer.from_settings(settings)
    client = CeleryCheckpointer(store, create_app(settings, store=store))
    bystander = sample_state(BYSTANDER)
    store.save_state(BYSTANDER, bystander)
    try:
        yield Agent(settings, store, client, server.client(), bystander)
    finally:
        client.close()
        store.close()


def settings_for(server: RedisServer, **overrides: Any) -> Settings:
    """Settings for ``server`` with a fresh namespace and queue."""
    values: dict[str, Any] = {
        "redis_url": server.url,
        "namespace": f"cat-{uuid.uuid4().hex[:8]}",
        "queue": f"cat-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return Settings(**values)


#: The served worker's size cap (small, so an over-cap message stays small too).
MAX_SNAPSHOT_BYTES = 64 * 1024


@dataclass
class Served:
    """The module's worker, its settings, store, app and a raw publisher."""

    settings: Settings
    store: RedisCheckpointer
    app: PersistenceApp
    client: CeleryCheckpointer
    worker: CeleryWorker
    bystander: AgentStateSnapshot
    _seq: list[int]

    def letters(self) -> list[dict[str, Any]]:
        return self.app.dead_letters.list(10_000)

    def publish(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Put a raw message on the queue; returns its task id (if it has headers)."""
        task_id = uuid.uuid4().hex
        if headers is not None:
            headers = {"id": task_id, "lang": "py", "argsrepr": "", "kwargsrepr": "", **headers}
        with Connection(self.settings.broker.get_secret_value()) as conn:
            Producer(conn).publish(
                body,
                routing_key=self.settings.queue,
                exchange="",
                content_type=content_type,
                content_encoding="binary" if content_type != "application/json" else "utf-8",
                headers=headers or {},
                retry=False,
            )
        return task_id

    def send(self, task: str, *, args: Any = (), kwargs: Any = None) -> str:
        """Publish a well-formed Celery message for ``task`` with these arguments."""
        queue = self.settings.queue
        result = self.app.send_task(task, args=args, kwargs=kwargs or {}, queue=queue)
        return str(result.id)

    def good_message(self, thread_id: str = "msg", version: int = 1) -> dict[str, Any]:
        return {
            "namespace": self.settings.namespace,
            "thread_id": thread_id,
            "version": version,
            "state": sample_state(thread_id).model_dump_json(),
            "saved_at_ms": 1,
        }

    def still_serving(self) -> None:
        """A good save handed off now becomes durable: the worker keeps serving."""
        self._seq[0] += 1
        tid = f"after-{self._seq[0]}"
        self.client.save_state(tid, sample_state(tid)).wait(timeout=20)
        assert self.worker.running
        assert self.store.load_state(BYSTANDER) == self.bystander

    def dead_letter_for(self, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for the dead letter of message ``task_id``."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.letters():
                if entry.get("task_id") == task_id:
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no dead letter for {task_id}:\n{self.worker.log_tail()}")
            time.sleep(0.05)

    def new_letters_after(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until there are more than ``count`` dead letters; return the new ones."""
        deadline = time.monotonic() + timeout
        while True:
            letters = self.letters()
            if len(letters) > count:
                return letters[: len(letters) - count]
            if time.monotonic() > deadline:
                raise AssertionError(f"no new dead letter:\n{self.worker.log_tail()}")
            time.sleep(0.05)


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A private redis-server (store and broker) and one worker for the whole package."""
    if find_redis_server() is None:
        skip_or_fail("no redis-server binary on PATH: private-server tests need one")
    server = RedisServer().start()
    settings = settings_for(server, max_snapshot_bytes=MAX_SNAPSHOT_BYTES)
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    client = CeleryCheckpointer(store, app)
    bystander = sample_state(BYSTANDER)
    store.save_state(BYSTANDER, bystander)
    env = settings_env(
        redis_url=server.url,
        namespace=settings.namespace,
        queue=settings.queue,
        max_snapshot_bytes=MAX_SNAPSHOT_BYTES,
    )
    worker = CeleryWorker(env, directory=tmp_path_factory.mktemp("worker"), concurrency=2)
    try:
        worker.start()
        yield Served(settings, store, app, client, worker, bystander, [0])
    finally:
        worker.stop()
        client.close()
        app.close()
        store.close()
        server.close()
