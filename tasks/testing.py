"""Pytest fixtures for code that persists agent state through agents-persistence.

This module is a pytest plugin, registered by the package's ``pytest11`` entry point: once
``agents-persistence`` is installed, every pytest run in that environment has these fixtures,
with no ``conftest.py`` and no import. They need fakeredis with Lua support, which the
``test`` extra brings (``pip install 'agents-persistence[test]'`` or
``pip install 'fakeredis[lua]'``); fakeredis is imported only when a fixture is used, so the
plugin costs nothing in suites that do not use it.

Nothing runs outside the test process: no Redis server, no broker, no worker. Each test gets
a private in-process fakeredis server and a namespace of its own.

``persistence_settings``
    :class:`~config.Settings` with ``eager=True``, a unique ``namespace``, an in-memory
    broker URL and the durable hand-off mode. Environment variables
    (``AGENTS_PERSISTENCE_*``) still fill the fields not set here; ``.env`` files are not
    read. Override the fixture to change TTLs, size caps or the hand-off mode.
``persistence_store``
    A :class:`~persistence.RedisCheckpointer` over ``fakeredis.FakeRedis``, built from
    ``persistence_settings`` (namespace, TTLs, size cap, compression).
``eager_app``
    The Celery app of :func:`tasks.create_app` in eager mode, writing through
    ``persistence_store``; ``eager_app.dead_letters`` holds what the tasks refused.
``eager_checkpointer``
    A :class:`~tasks.CeleryCheckpointer` on ``eager_app``. ``save_state`` runs the real save
    task inline, after the same JSON round trip a broker imposes (same validation, same
    message parsing, same versioned write), so a save is durable when it returns. Closed
    after the test.

Eager mode proves the logic, not the reliability: crashes, redeliveries and broker outages
need real worker processes.

Example::

    from agents_persistence import AgentStateSnapshot, TodoItem

    def test_agent_checkpoints(eager_checkpointer):
        state = AgentStateSnapshot(todos=[TodoItem.pending("write the report")])
        handle = eager_checkpointer.save_state("thread-1", state, version=1)
        handle.wait(timeout=1)  # returns at once in eager mode
        assert eager_checkpointer.load_state("thread-1") == state
        assert eager_checkpointer.list_threads() == ["thread-1"]

Other settings for every test of a module or package (a ``conftest.py``)::

    import pytest

    @pytest.fixture
    def persistence_settings(persistence_settings):
        return persistence_settings.model_copy(
            update={"ttl_seconds": 30.0, "handoff_mode": "buffered"}
        )
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from agents_persistence.config.settings import Settings
    from agents_persistence.redis_store import RedisCheckpointer
    from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = [
    "eager_app",
    "eager_checkpointer",
    "persistence_namespace",
    "persistence_settings",
    "persistence_store",
]

_MISSING = (
    "the agents-persistence test fixtures need fakeredis with Lua support: "
    "pip install 'fakeredis[lua]' (or 'agents-persistence[test]')"
)


def _fake_client() -> Any:
    """A ``fakeredis.FakeRedis`` on a server of its own (raises a clear error if missing)."""
    try:
        import fakeredis
    except ImportError as exc:
        raise RuntimeError(_MISSING) from exc
    if importlib.util.find_spec("lupa") is None:
        raise RuntimeError(_MISSING + " (lupa, fakeredis's Lua runtime, is not installed)")
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def persistence_namespace() -> str:
    """A namespace of its own for this test, such as ``test-1a2b3c4d``."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def persistence_settings(persistence_namespace: str) -> Settings:
    """Settings for eager, in-process persistence (override to change them)."""
    from agents_persistence.config.settings import Settings

    return Settings(
        _env_file=None,
        eager=True,
        namespace=persistence_namespace,
        broker_url="memory://",
        handoff_mode="durable",
    )


@pytest.fixture
def persistence_store(persistence_settings: Settings) -> Iterator[RedisCheckpointer]:
    """A :class:`RedisCheckpointer` over a private fakeredis server."""
    from agents_persistence.redis_store import RedisCheckpointer

    s = persistence_settings
    store = RedisCheckpointer(
        _fake_client(),
        namespace=s.namespace,
        ttl=s.ttl_seconds,
        tombstone_ttl=s.tombstone_ttl_seconds,
        codec=s.build_codec(),
        retry=s.build_retry_policy(),
    )
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def eager_app(
    persistence_settings: Settings, persistence_store: RedisCheckpointer
) -> PersistenceApp:
    """The Celery app in eager mode: tasks run inline and write through ``persistence_store``."""
    from agents_persistence.tasks.worker.app import create_app

    if not persistence_settings.eager:
        raise ValueError("eager_app needs persistence_settings with eager=True")
    return create_app(persistence_settings, store=persistence_store)


@pytest.fixture
def eager_checkpointer(
    eager_app: PersistenceApp, persistence_store: RedisCheckpointer
) -> Iterator[CeleryCheckpointer]:
    """A :class:`CeleryCheckpointer` whose saves run the real task inline (durable on return)."""
    from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer

    client = CeleryCheckpointer(persistence_store, eager_app)
    try:
        yield client
    finally:
        client.close()
