"""A private ``redis-server`` for tests that stop, kill, pause or restart their store.

The implementation is the project's one harness,
:mod:`agents_persistence.tasks.devtools.redis_server` (shared with the demo and bench/);
this module keeps the names tests import.

::

    with RedisServer(appendonly=True) as server:
        client = server.client()
        client.set("k", "v")
        server.kill()        # SIGKILL, like a crash
        server.restart()     # same port, same directory: the AOF brings "k" back
"""

from __future__ import annotations

from agents_persistence.tasks.devtools.redis_server import (
    RedisServer,
    RedisServerError,
    find_redis_server,
    free_port,
)

__all__ = [
    "RedisServer",
    "RedisServerError",
    "find_redis_server",
    "free_port",
]
