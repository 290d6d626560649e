"""The demo's private Redis, for real: it answers, runs Lua, and leaves nothing behind."""

from __future__ import annotations

import os

import pytest
import redis
from agents_persistence.tasks.devtools.redis_server import (
    EmbeddedKind,
    fakeredis_available,
    find_redis_server,
    start_embedded_redis,
)

from tests.support import skip_or_fail

pytestmark = pytest.mark.redis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("kind", ["redis-server", "fakeredis"])
def test_start_use_and_close(kind: EmbeddedKind) -> None:
    if kind == "redis-server" and find_redis_server() is None:
        skip_or_fail("no redis-server on PATH")
    if kind == "fakeredis" and not fakeredis_available():
        skip_or_fail("fakeredis[lua] is not installed")
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
