"""Fixtures of the LangGraph saver's tests: savers on fakeredis (``unit``) or on the machine's
real server (``redis``, in a namespace of its own that is deleted afterwards).

``saver_backend`` runs a test once on each; ``fake_savers`` and ``real_savers`` build savers
of one kind. Every saver built is closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aredis
from agents_persistence.langgraph import RedisCheckpointSaver

from tests.integration.conftest import (  # noqa: F401 - fixtures for write-behind tests
    celery_beat_factory,
    celery_worker_factory,
    stack,
    stack_factory,
)

HERE = Path(__file__).parent

SaverFactory = Callable[..., RedisCheckpointSaver]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Items of this package that use no real server are ``unit`` tests; those with real
    workers (``stack``) are ``integration`` tests."""
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue
        names = getattr(item, "fixturenames", ())
        if "stack" in names or "stack_factory" in names:
            item.add_marker(pytest.mark.integration)
        real = bool({"real_redis_url", "redis_server_factory"} & set(names))
        if not real and item.get_closest_marker("redis") is None:
            item.add_marker(pytest.mark.unit)


class Savers:
    """Builds savers over one server, and a raw client to inspect its keys."""

    def __init__(self, kind: str, namespace: str, raw: redis.Redis, build: SaverFactory) -> None:
        self.kind = kind
        self.namespace = namespace
        self.raw = raw
        self._build = build
        self._made: list[RedisCheckpointSaver] = []

    def make(self, **kwargs: Any) -> RedisCheckpointSaver:
        """A saver (``ttl=``, ``refresh_on_read=``, ``serde=``...) in the namespace."""
        kwargs.setdefault("namespace", self.namespace)
        saver = self._build(**kwargs)
        self._made.append(saver)
        return saver

    def stored_keys(self) -> list[bytes]:
        """Every key of the namespace, sorted."""
        return sorted(self.raw.scan_iter(match=f"{self.namespace}:*", count=1000))

    def close(self) -> None:
        for saver in self._made:
            saver.close()
        self.raw.close()


@pytest.fixture
def fake_savers(namespace: str) -> Iterator[Savers]:
    """Savers on a private fakeredis server (sync and asyncio clients)."""
    server = fakeredis.FakeServer()

    def build(*, sync: bool = True, asyncio: bool = True, **kwargs: Any) -> RedisCheckpointSaver:
        client = fakeredis.FakeRedis(server=server) if sync else None
        aclient = fakeredis.FakeAsyncRedis(server=server) if asyncio else None
        return RedisCheckpointSaver(client, aclient=aclient, **kwargs)

    savers = Savers("fakeredis", namespace, fakeredis.FakeRedis(server=server), build)
    yield savers
    savers.close()


@pytest.fixture
def real_savers(real_redis_url: str, namespace: str) -> Iterator[Savers]:
    """Savers on the machine's Redis, in this test's namespace (deleted afterwards)."""

    def build(*, sync: bool = True, asyncio: bool = True, **kwargs: Any) -> RedisCheckpointSaver:
        if sync and asyncio:
            return RedisCheckpointSaver.from_url(real_redis_url, **kwargs)
        client = redis.Redis.from_url(real_redis_url) if sync else None
        aclient = aredis.Redis.from_url(real_redis_url) if asyncio else None
        return RedisCheckpointSaver(client, aclient=aclient, **kwargs)

    savers = Savers("redis", namespace, redis.Redis.from_url(real_redis_url), build)
    yield savers
    savers.close()


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def savers(request: pytest.FixtureRequest) -> Savers:
    """Each backend in turn: fakeredis, then the real server."""
    name = "fake_savers" if request.param == "fakeredis" else "real_savers"
    built: Savers = request.getfixturevalue(name)
    return built
