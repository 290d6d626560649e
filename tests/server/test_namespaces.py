"""Namespace clean-up on the shared server removes exactly the namespace's keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from agents_persistence import RedisCheckpointer

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
    try:
        assert len(namespace_keys(real_redis, ns)) == 31  # 30 records/tombstones + index
        assert delete_namespace(real_redis, ns) == 31
        assert namespace_keys(real_redis, ns) == []
        for name in neighbours:
            assert len(namespace_keys(real_redis, name)) == 31
        assert real_redis.get(f"{longer}:thread:x") == b"not ours"
    finally:
        real_redis.delete(f"{longer}:thread:x")
