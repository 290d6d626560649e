"""One ``backend`` fixture, five implementations: every conformance test runs on each.

* ``memory``: :class:`InMemoryCheckpointer` (marked ``unit``);
* ``fakeredis``: :class:`RedisCheckpointer` on a private ``fakeredis.FakeServer`` (``unit``);
* ``redis``: :class:`RedisCheckpointer` on the machine's real server, in a namespace of its
  own that is deleted afterwards (``redis``);
* ``async-fakeredis`` and ``async-redis``: :class:`AsyncRedisCheckpointer` on the same two
  servers, each call awaited on an event loop thread of the backend's own
  (``async_facade.BlockingFacade``), so the same test functions apply;
* ``cluster`` / ``async-cluster``: both stores on the session's private Redis Cluster
  (3 primaries + 3 replicas, ``redis+cluster://``), and ``sentinel`` / ``async-sentinel``
  on the session's private Sentinel group (``redis+sentinel://``) (``redis``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import fakeredis
import fakeredis.aioredis
import pytest
import redis
from agents_persistence import (
    AsyncRedisCheckpointer,
    BaseCheckpointer,
    InMemoryCheckpointer,
    RedisCheckpointer,
)
from agents_persistence.connect import blocking_client

from tests.conformance.async_facade import BlockingFacade, LoopThread
from tests.support import namespace_keys


@dataclass
class Backend:
    """A way to build checkpointers of one kind, all sharing one store.

    Attributes:
        name: ``memory``, ``fakeredis``, ``redis``, ``async-fakeredis`` or ``async-redis``.
        namespace: the default namespace (Redis backends).
        client: a raw client of the server (None for memory), to plant or inspect keys.
    """

    name: str
    namespace: str
    client: redis.Redis | None
    _build: Callable[..., BaseCheckpointer]
    _new_namespace: Callable[[], str]
    _made: list[BaseCheckpointer] = field(default_factory=list)
    _loop: LoopThread | None = None

    @property
    def is_redis(self) -> bool:
        """True for the two RedisCheckpointer backends."""
        return self.client is not None

    def make(self, *, namespace: str | None = None, **kwargs: Any) -> BaseCheckpointer:
        """A checkpointer (``ttl=``, ``codec=``, ... as keywords) in ``namespace`` (default:
        the backend's). For memory every call is a separate store."""
        store = self._build(namespace or self.namespace, **kwargs)
        self._made.append(store)
        return store

    def new_namespace(self) -> str:
        """Another fresh namespace on the same server (cleaned up like the first)."""
        return self._new_namespace()

    def raw_client(self) -> redis.Redis:
        """The raw client; skips the test on the memory backend."""
        if self.client is None:
            pytest.skip("needs a Redis server to inspect or plant keys")
        return self.client

    def keys(self, namespace: str | None = None) -> list[bytes]:
        """Every key in ``namespace`` (default: the backend's); [] for memory."""
        if self.client is None:
            return []
        return namespace_keys(self.client, namespace or self.namespace)

    def close(self) -> None:
        for store in self._made:
            if isinstance(store, (RedisCheckpointer, BlockingFacade)):
                store.close()
        if self._loop is not None:
            self._loop.stop()
        if self.client is not None:
            self.client.close()


def _memory(namespace: str, **kwargs: Any) -> BaseCheckpointer:
    return InMemoryCheckpointer(namespace=namespace, **kwargs)


def _open(
    kind: str, request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Backend:
    ns = namespace_factory()
    if kind == "memory":
        return Backend("memory", ns, None, _memory, namespace_factory)
    client: redis.Redis
    url: str = ""
    if kind.endswith("fakeredis"):
        server = fakeredis.FakeServer()
        client = fakeredis.FakeRedis(server=server)
    elif kind.endswith(("cluster", "sentinel")):
        if kind.endswith("cluster"):
            url = request.getfixturevalue("redis_cluster").url
        else:
            url = request.getfixturevalue("redis_sentinel").url()
        client = cast(redis.Redis, blocking_client(url, socket_timeout=5.0))
    else:
        url = request.getfixturevalue("real_redis_url")
        client = redis.Redis.from_url(url, socket_timeout=5.0)
    if kind.startswith("async-"):
        loop = LoopThread()

        def build_async(namespace: str, **kwargs: Any) -> BaseCheckpointer:
            if kind == "async-fakeredis":
                aclient = fakeredis.aioredis.FakeRedis(server=server)
                store = AsyncRedisCheckpointer(aclient, namespace=namespace, **kwargs)
            else:
                store = AsyncRedisCheckpointer.from_url(url, namespace=namespace, **kwargs)
            return BlockingFacade(store, loop)

        return Backend(kind, ns, client, build_async, namespace_factory, _loop=loop)

    def build(namespace: str, **kwargs: Any) -> BaseCheckpointer:
        if kind == "fakeredis":
            return RedisCheckpointer(
                fakeredis.FakeRedis(server=server), namespace=namespace, **kwargs
            )
        return RedisCheckpointer.from_url(url, namespace=namespace, **kwargs)

    return Backend(kind, ns, client, build, namespace_factory)


_MEMORY = pytest.param("memory", marks=pytest.mark.unit)
_FAKEREDIS = pytest.param("fakeredis", marks=pytest.mark.unit)
_REDIS = pytest.param("redis", marks=pytest.mark.redis)
_ASYNC_FAKEREDIS = pytest.param("async-fakeredis", marks=pytest.mark.unit)
_ASYNC_REDIS = pytest.param("async-redis", marks=pytest.mark.redis)
_CLUSTER = pytest.param("cluster", marks=pytest.mark.redis)
_ASYNC_CLUSTER = pytest.param("async-cluster", marks=pytest.mark.redis)
_SENTINEL = pytest.param("sentinel", marks=pytest.mark.redis)
_ASYNC_SENTINEL = pytest.param("async-sentinel", marks=pytest.mark.redis)


@pytest.fixture(
    params=[
        _MEMORY,
        _FAKEREDIS,
        _REDIS,
        _ASYNC_FAKEREDIS,
        _ASYNC_REDIS,
        _CLUSTER,
        _ASYNC_CLUSTER,
        _SENTINEL,
        _ASYNC_SENTINEL,
    ]
)
def backend(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[Backend]:
    """Each implementation of the contract in turn."""
    opened = _open(request.param, request, namespace_factory)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=[_FAKEREDIS, _REDIS, _CLUSTER, _SENTINEL])
def redis_backend(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[Backend]:
    """The RedisCheckpointer backends only (tests that plant or inspect raw keys; the
    async store runs the same operations, :mod:`agents_persistence.redis_ops`)."""
    opened = _open(request.param, request, namespace_factory)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def store(backend: Backend) -> BaseCheckpointer:
    """A checkpointer of the current backend, no TTL."""
    return backend.make()
