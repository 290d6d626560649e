"""Namespace clean-up on the shared server removes exactly the namespace's keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from agents_persistence import RedisCheckpointer
from agents_persistence.keys import Keys

from tests.support import delete_namespace, namespace_keys, sample_state

pytestmark = pytest.mark.redis


def test_delete_namespace_removes_only_its_keys(
    real_redis: redis.Redis, real_redis_url: str, namespace_factory: Callable[[], str]
) -> None:
    ns = namespace_factory()
    neighbours = [namespace_factory() for _ in range(2)]
    longer = f"{ns}x"  # shares the prefix: must survive
    for name in (ns, *neighbours):
        store = RedisCheckpointer.from_url(real_redis_url, namespace=name, ttl=60)
        try:
            for i in range(30):
                store.save_state(f"a:{i}", sample_state())
            store.delete_thread("a:0")
        finally:
            store.close()
    real_redis.set(f"{longer}:thread:x", "not ours")
    keys = Keys(ns)  # 30 records/tombstones, the index shards of a:1 .. a:29, the layout
    expected = 30 + len({keys.shard(f"a:{i}") for i in range(1, 30)}) + 1
    try:
        assert len(namespace_keys(real_redis, ns)) == expected
        assert delete_namespace(real_redis, ns) == expected
        assert namespace_keys(real_redis, ns) == []
        for name in neighbours:
            keys = Keys(name)
            count = 30 + len({keys.shard(f"a:{i}") for i in range(1, 30)}) + 1
            assert len(namespace_keys(real_redis, name)) == count
        assert real_redis.get(f"{longer}:thread:x") == b"not ours"
    finally:
        real_redis.delete(f"{longer}:thread:x")
