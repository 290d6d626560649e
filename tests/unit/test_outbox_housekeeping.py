"""The agent side never touches the store on the hand-off path, even past 1,024 threads.

Once the client's outbox tracks ``_PRUNE_MIN`` (1,024) threads it reads the store to prune
it. That read used to run inside ``save_state`` (durable mode: each call then raised
``StoreUnavailable`` or blocked while the store was down although the broker held its
message) and on the buffered publisher's thread (which then re-published a batch the broker
had already taken). Here the store is dead, or hangs, for every read; 1,100 hand-offs on
distinct threads go to kombu's ``memory://`` broker through a real (non-eager) app, and every
store call is recorded with the thread that made it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import fakeredis
import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.errors import StoreUnavailable
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.worker.app import create_app

from tests.support import sample_state

pytestmark = pytest.mark.unit

HANDOFFS = 1100  # past the 1,024 threads at which the outbox is first pruned


class SpyStore(RedisCheckpointer):
    """A store whose reads of versions fail (``dead``) or hang (``hung``) and which records
    the thread of every store call."""

    def __init__(self, behaviour: Literal["dead", "hung"]) -> None:
        server = fakeredis.FakeServer()
        server.connected = behaviour == "hung"  # "dead": every command fails to connect
        super().__init__(
            fakeredis.FakeRedis(server=server),
            namespace=f"o-{uuid.uuid4().hex[:8]}",
            retry=RetryPolicy(attempts=1, initial_backoff=0.001, max_backoff=0.001, deadline=0.05),
        )
        self.behaviour = behaviour
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self._calls_lock = threading.Lock()

    def _record(self, what: str) -> None:
        with self._calls_lock:
            self.calls.append((what, threading.current_thread().name))

    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        self._record("stored_versions")
        if self.behaviour == "hung":
            self.release.wait()  # a SIGSTOPped server: no answer until the test ends
            raise StoreUnavailable("versions: no answer")
        return super().stored_versions(thread_ids)

    def save_many(self, saves: Sequence[Any]) -> list[Any]:
        self._record("save_many")
        return super().save_many(saves)

    def threads_that_called(self) -> set[str]:
        with self._calls_lock:
            return {name for _, name in self.calls}


@pytest.fixture(params=["dead", "hung"])
def store(request: pytest.FixtureRequest) -> Iterator[SpyStore]:
    spy = SpyStore(request.param)
    try:
        yield spy
    finally:
        spy.release.set()
        spy.close()


def _client(store: SpyStore, mode: Literal["durable", "buffered"]) -> CeleryCheckpointer:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None, eager=False, broker_url="memory://", namespace=store.namespace,
        queue=f"o-{tag}", handoff_mode=mode,
    )  # fmt: skip
    return CeleryCheckpointer(store, create_app(settings, store=store), settings=settings)


def _hand_off(client: CeleryCheckpointer, results: dict[str, Any]) -> None:
    """Hand off HANDOFFS saves on distinct threads (run on a thread of its own)."""
    slowest = 0.0
    try:
        for i in range(HANDOFFS):
            began = time.monotonic()
            client.save_state(f"t-{i:05d}", sample_state(f"t-{i}"), version=1)
            slowest = max(slowest, time.monotonic() - began)
    except BaseException as exc:
        results["error"] = exc
    results["slowest"] = slowest


def _run_caller(client: CeleryCheckpointer) -> tuple[dict[str, Any], str]:
    results: dict[str, Any] = {}
    caller = threading.Thread(target=_hand_off, args=(client, results), name="agent-caller")
    caller.start()
    caller.join(60.0)  # a hung store read on this path would hold it forever
    assert not caller.is_alive(), "save_state blocked on the store"
    return results, caller.name


def _wait_for_prune_attempt(store: SpyStore, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(what == "stored_versions" for what, _ in list(store.calls)):
        assert time.monotonic() < deadline, "the outbox was never pruned"
        time.sleep(0.01)


def test_durable_handoffs_never_touch_a_failing_store(store: SpyStore) -> None:
    client = _client(store, "durable")
    published: list[str] = []
    send = client._sender.send

    def record(name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        send(name, kwargs, kwargsrepr)
        published.append(kwargs["thread_id"])

    client._sender.send = record  # type: ignore[method-assign]
    try:
        results, caller = _run_caller(client)
        _wait_for_prune_attempt(store)

        assert "error" not in results, results.get("error")
        assert client.handed_off == HANDOFFS
        assert len(published) == len(set(published)) == HANDOFFS
        # Every store call came from the housekeeping thread, none from the caller.
        assert store.threads_that_called() == {"agents-persistence-outbox"}
        assert caller not in store.threads_that_called()
        assert len(client.pending) == HANDOFFS  # nothing was pruned: the store never answered
    finally:
        store.release.set()
        client.close(timeout=5.0)


def test_buffered_handoffs_publish_each_batch_once(store: SpyStore) -> None:
    client = _client(store, "buffered")
    published: Counter[tuple[str, int]] = Counter()
    send = client._sender.send

    def record(name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        send(name, kwargs, kwargsrepr)
        published.update((e["thread_id"], e["version"]) for e in kwargs["entries"])

    client._sender.send = record  # type: ignore[method-assign]
    try:
        results, caller = _run_caller(client)
        _wait_for_prune_attempt(store)
        assert client._publisher is not None
        client._publisher.flush(timeout=30.0)  # publishes the buffer; never reads the store

        assert "error" not in results, results.get("error")
        assert sum(published.values()) == len(published) == HANDOFFS, published.most_common(3)
        assert store.threads_that_called() == {"agents-persistence-outbox"}
        assert caller not in store.threads_that_called()
    finally:
        store.release.set()
        client.close(timeout=5.0)
