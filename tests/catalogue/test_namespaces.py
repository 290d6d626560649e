"""Catalogue, class 4: namespaces sharing a broker stay apart.

Each namespace has a queue of its own unless ``queue`` is set, so two fleets with different
namespaces on one broker never see each other's hand-offs. Where operators share a queue on
purpose, a worker dead-letters another namespace's hand-off into that namespace's own list
(never its own, where the other namespace's data would be readable through this one's CLI).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from agents_persistence import RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.tasks import (
    DELETE_TASK,
    SAVE_BATCH_TASK,
    SAVE_TASK,
    CeleryCheckpointer,
    create_app,
)
from agents_persistence.tasks.worker.app import celery_config
from agents_persistence.tasks.worker.dead_letters import DeadLetters

from tests.catalogue.conftest import Served
from tests.support import RedisServer, sample_state
from tests.support.celery_worker import CeleryWorker, settings_env


@pytest.mark.unit
def test_each_namespace_has_its_own_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Left unset, ``queue`` follows the namespace: ``agents_persistence`` for the default
    namespace (as before), ``agents_persistence.<ns>`` for any other; the client publishes
    and the worker consumes there; a queue that was set (keyword or environment) wins."""
    queues = {ns: Settings(namespace=ns).queue for ns in ("agents", "fleet-a", "fleet-b")}
    assert queues == {
        "agents": "agents_persistence",
        "fleet-a": "agents_persistence.fleet-a",
        "fleet-b": "agents_persistence.fleet-b",
    }
    config = celery_config(Settings(namespace="fleet-a"))
    assert config["task_default_queue"] == "agents_persistence.fleet-a"
    assert Settings(namespace="fleet-a", queue="shared").queue == "shared"
    monkeypatch.setenv("AGENTS_PERSISTENCE_NAMESPACE", "fleet-c")
    assert Settings().queue == "agents_persistence.fleet-c"
    monkeypatch.setenv("AGENTS_PERSISTENCE_QUEUE", "ops-chosen")
    assert Settings().queue == "ops-chosen"


@pytest.mark.integration
def test_fleets_with_default_queues_stay_apart(redis_server: RedisServer, tmp_path: Path) -> None:
    """Fleet A (a worker) and fleet B (a client only) on one broker, neither setting a
    queue: B's hand-off waits in B's queue, A's worker never takes it; A's own hand-off is
    stored; A's dead-letter list stays empty."""
    ns_a, ns_b = f"fa-{uuid.uuid4().hex[:6]}", f"fb-{uuid.uuid4().hex[:6]}"
    a, b = (
        Settings(redis_url=redis_server.url, namespace=ns_a),
        Settings(redis_url=redis_server.url, namespace=ns_b),
    )
    worker = CeleryWorker(
        settings_env(redis_url=redis_server.url, namespace=ns_a), directory=tmp_path
    ).start()
    store_a, store_b = RedisCheckpointer.from_settings(a), RedisCheckpointer.from_settings(b)
    client_a = CeleryCheckpointer(store_a, create_app(a, store=store_a))
    client_b = CeleryCheckpointer(store_b, create_app(b, store=store_b))
    raw = redis_server.client()
    try:
        client_b.save_state("t", sample_state("b"))  # durable: the broker holds it now
        client_a.save_state("t", sample_state("a")).wait(timeout=30)
        assert raw.llen(b.queue) == 1
        assert raw.llen(a.queue) == 0
        assert store_b.load_state("t") is None
        assert client_a.app.dead_letters.count() == 0
        assert worker.running
    finally:
        worker.stop()
        client_a.close()
        client_b.close()


def _foreign(served: Served, kind: str, other: str) -> tuple[str, dict[str, Any]]:
    message = {**served.good_message(f"foreign-{kind}", 3), "namespace": other}
    if kind == "save":
        return SAVE_TASK, message
    if kind == "batch":
        entry = {k: v for k, v in message.items() if k != "namespace"}
        return SAVE_BATCH_TASK, {"namespace": other, "entries": [entry]}
    return DELETE_TASK, {"namespace": other, "thread_id": "foreign-delete", "version": 4}


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.parametrize("kind", ["save", "batch", "delete"])
def test_foreign_message_is_dead_lettered_in_its_own_namespace(served: Served, kind: str) -> None:
    """A hand-off naming another namespace on this fleet's queue (a queue operators
    shared): dead-lettered with ForeignNamespace into that namespace's list, naming that
    namespace; this namespace's list never holds it; nothing is written; the worker keeps
    serving."""
    other = f"other-{uuid.uuid4().hex[:8]}"
    letters = DeadLetters(served.store.dead_letter_list(100, namespace=other))
    task, kwargs = _foreign(served, kind, other)
    task_id = served.send(task, kwargs=kwargs)
    deadline = time.monotonic() + 15
    while not (entries := letters.list()):
        assert time.monotonic() < deadline, served.worker.log_tail()
        time.sleep(0.05)
    (entry,) = entries
    assert entry["task_id"] == task_id
    assert entry["error"] == "ForeignNamespace"
    assert entry["namespace"] == other
    assert all(e.get("task_id") != task_id for e in served.letters())
    served.still_serving()
    assert served.store.stored_versions([f"foreign-{kind}"]) == {f"foreign-{kind}": 0}
    letters.purge()
