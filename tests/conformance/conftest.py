"""One ``backend`` fixture, three implementations: every conformance test runs on each.

* ``memory``: :class:`InMemoryCheckpointer` (marked ``unit``);
* ``fakeredis``: :class:`RedisCheckpointer` on a private ``fakeredis.FakeServer`` (``unit``);
* ``redis``: :class:`RedisCheckpointer` on the machine's real server, in a namespace of its
  own that is deleted afterwards (``redis``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis
from agents_persistence import BaseCheckpointer, InMemoryCheckpointer, RedisCheckpointer

from tests.support import namespace_keys


@dataclass
class Backend:
    """A way to build checkpointers of one kind, all sharing one store.

    Attributes:
        name: ``memory``, ``fakeredis`` or ``redis``.
        namespace: the default namespace (Redis backends).
        client: a raw client of the server (None for memory), to plant or inspect keys.
    """

    name: str
    namespace: str
    client: redis.Redis | None
    _build: Callable[..., BaseCheckpointer]
    _new_namespace: Callable[[], str]
    _made: list[BaseCheckpointer] = field(default_factory=list)

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
            if isinstance(store, RedisCheckpointer):
                store.close()
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
    if kind == "fakeredis":
        server = fakeredis.FakeServer()

        def build_fake(namespace: str, **kwargs: Any) -> BaseCheckpointer:
            client = fakeredis.FakeRedis(server=server)
            return RedisCheckpointer(client, namespace=namespace, **kwargs)

        fake = fakeredis.FakeRedis(server=server)
        return Backend("fakeredis", ns, fake, build_fake, namespace_factory)
    url: str = request.getfixturevalue("real_redis_url")

    def build_real(namespace: str, **kwargs: Any) -> BaseCheckpointer:
        return RedisCheckpointer.from_url(url, namespace=namespace, **kwargs)

    client = redis.Redis.from_url(url, socket_timeout=5.0)
    return Backend("redis", ns, client, build_real, namespace_factory)


_MEMORY = pytest.param("memory", marks=pytest.mark.unit)
_FAKEREDIS = pytest.param("fakeredis", marks=pytest.mark.unit)
_REDIS = pytest.param("redis", marks=pytest.mark.redis)


@pytest.fixture(params=[_MEMORY, _FAKEREDIS, _REDIS])
def backend(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[Backend]:
    """Each implementation of the contract in turn."""
    opened = _open(request.param, request, namespace_factory)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=[_FAKEREDIS, _REDIS])
def redis_backend(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[Backend]:
    """The two RedisCheckpointer backends only (tests that plant or inspect raw keys)."""
    opened = _open(request.param, request, namespace_factory)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def store(backend: Backend) -> BaseCheckpointer:
    """A checkpointer of the current backend, no TTL."""
    return backend.make()
