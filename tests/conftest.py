"""Fixtures every test package can use: private and shared Redis servers, namespaces.

* ``redis_server_factory`` / ``redis_server``: private ``redis-server`` processes on free
  ports, killed by PID after the test whatever happens.
* ``real_redis_url`` / ``real_redis``: the machine's shared server (127.0.0.1:6379 unless
  ``AGENTS_PERSISTENCE_TEST_REDIS_URL`` says otherwise).
* ``redis_cluster`` / ``redis_sentinel``: a private Redis Cluster (3 + 3) and Sentinel group,
  once per session (:mod:`tests.support.topologies`).
* ``namespace`` / ``namespace_factory``: fresh ``t-<uuid8>`` namespaces; if the test used the
  shared server, every ``<namespace>:*`` key is deleted afterwards (never a FLUSHDB).

Without a server (or without the ``redis-server`` binary) these skip locally with the
reason and fail under ``CI=true``. Tests using them are marked ``redis`` automatically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support import (
    RedisServer,
    RedisServerError,
    delete_namespace,
    env,
    find_redis_server,
    redis_answers,
    skip_or_fail,
    unique_namespace,
)
from tests.support.topologies import redis_cluster, redis_sentinel

__all__ = ["redis_cluster", "redis_sentinel"]  # session fixtures: private topologies

#: Set on a test item once it touched the shared server, so its namespaces get cleaned.
USED_REAL_REDIS = pytest.StashKey[bool]()

_REDIS_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_server_factory",
        "real_redis_url",
        "real_redis",
        "redis_cluster",
        "redis_sentinel",
    }
)

RedisServerFactory = Callable[..., RedisServer]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real server ``redis``."""
    for item in items:
        if _REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


# -- private servers ------------------------------------------------------------------------------
@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """Start private redis-servers: ``factory(appendonly=..., requirepass=..., extra_args=...)``.

    Every server started is killed by PID and its temp dir removed after the test.
    """
    if find_redis_server() is None:
        skip_or_fail("no redis-server binary on PATH: private-server tests need one")
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        try:
            return server.start()
        except RedisServerError as exc:
            pytest.fail(f"could not start a private redis-server: {exc}", pytrace=False)

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.close()


@pytest.fixture
def redis_server(redis_server_factory: RedisServerFactory) -> RedisServer:
    """A private redis-server (no AOF, no password) for this test only."""
    return redis_server_factory()


# -- the shared server ----------------------------------------------------------------------------
@functools.cache
def _shared_server_problem(url: str) -> str | None:
    return redis_answers(url)


@pytest.fixture
def real_redis_url(request: pytest.FixtureRequest) -> str:
    """URL of the machine's shared Redis; skips (fails under CI=true) if nothing answers.

    Write only under a ``namespace`` from the fixture: its keys are removed after the test.
    """
    url = env.real_redis_url()
    problem = _shared_server_problem(url)
    if problem is not None:
        skip_or_fail(f"no Redis answers at {url} ({problem})")
    request.node.stash[USED_REAL_REDIS] = True
    return url


@pytest.fixture
def real_redis(real_redis_url: str) -> Iterator[redis.Redis]:
    """A raw client of the shared server (never FLUSH it: other data lives there)."""
    client = redis.Redis.from_url(real_redis_url, socket_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


# -- namespaces -----------------------------------------------------------------------------------
@pytest.fixture
def namespace_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Make fresh namespaces; their keys on the shared server are deleted after the test.

    Clean-up runs when the test touched the shared server through ``real_redis_url`` or
    ``real_redis`` (so tests on fakeredis or a private server pay no SCAN): request one of
    them to write to the shared server.
    """
    made: list[str] = []

    def make() -> str:
        ns = unique_namespace()
        made.append(ns)
        return ns

    yield make
    if made and request.node.stash.get(USED_REAL_REDIS, False):
        client = redis.Redis.from_url(env.real_redis_url(), socket_timeout=5.0)
        try:
            for ns in made:
                delete_namespace(client, ns)
        finally:
            client.close()


@pytest.fixture
def namespace(namespace_factory: Callable[[], str]) -> str:
    """A fresh namespace such as ``t-1a2b3c4d`` (cleaned up after the test)."""
    return namespace_factory()
