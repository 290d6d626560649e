"""Session-wide private topologies: a Redis Cluster (3 primaries + 3 replicas) and a
Sentinel group (primary, replica, 3 sentinels), each started once per test session on free
ports and ended by PID at its end.

Without ``redis-server`` (or ``redis-cli``) the tests using them skip locally with the reason
and fail under ``CI=true``. Tests that kill a node start a topology of their own
(:class:`~agents_persistence.tasks.devtools.topologies.RedisClusterTopology` as a context
manager) so the shared ones stay whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    TopologyError,
    find_redis_cli,
)

from tests.support.env import skip_or_fail
from tests.support.redis_server import find_redis_server

__all__ = ["redis_cluster", "redis_sentinel", "require_topology_binaries"]


def require_topology_binaries() -> None:
    """Skip (fail under CI=true) without ``redis-server`` and ``redis-cli``."""
    if find_redis_server() is None:
        skip_or_fail("no redis-server binary on PATH: topology tests need one")
    if find_redis_cli() is None:
        skip_or_fail("no redis-cli binary beside redis-server or on PATH: cluster tests need it")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterTopology]:
    """A private Redis Cluster, 3 primaries + 3 replicas, for the whole session (never kill
    its nodes: start your own topology for that)."""
    require_topology_binaries()
    try:
        cluster = RedisClusterTopology().start()
    except TopologyError as exc:
        pytest.fail(f"could not start a private Redis Cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelTopology]:
    """A private primary + replica + 3 sentinels for the whole session (service
    ``mymaster``, password ``topology-secret``)."""
    require_topology_binaries()
    try:
        group = RedisSentinelTopology(password="topology-secret").start()
    except TopologyError as exc:
        pytest.fail(f"could not start a private Sentinel group: {exc}", pytrace=False)
    try:
        yield group
    finally:
        group.close()
