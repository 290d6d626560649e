"""Topology tests: the store on a private Redis Cluster and a Sentinel group.

The session-wide ``redis_cluster`` and ``redis_sentinel`` fixtures come from
:mod:`tests.support.topologies` (through ``tests/conftest.py``, so the conformance suite
shares them). Tests that kill nodes start topologies of their own with ``own_cluster`` /
``own_sentinel``; every process is ended by PID. ``celery_worker_factory`` (from
:mod:`tests.integration.conftest`) starts real worker subprocesses for the fleet tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    TopologyError,
)

from tests.integration.conftest import celery_worker_factory
from tests.support.topologies import require_topology_binaries

__all__ = ["celery_worker_factory"]  # real worker subprocesses, stopped after the test


@pytest.fixture
def own_cluster() -> Iterator[Callable[..., RedisClusterTopology]]:
    """Start a private cluster for this test only: ``own_cluster(appendonly=True, ...)``."""
    require_topology_binaries()
    made: list[RedisClusterTopology] = []

    def start(**kwargs: Any) -> RedisClusterTopology:
        topology = RedisClusterTopology(**kwargs)
        made.append(topology)
        try:
            return topology.start()
        except TopologyError as exc:
            pytest.fail(f"could not start a private Redis Cluster: {exc}", pytrace=False)

    try:
        yield start
    finally:
        for topology in made:
            topology.close()


@pytest.fixture
def own_sentinel() -> Iterator[Callable[..., RedisSentinelTopology]]:
    """Start a private Sentinel group for this test only."""
    require_topology_binaries()
    made: list[RedisSentinelTopology] = []

    def start(**kwargs: Any) -> RedisSentinelTopology:
        topology = RedisSentinelTopology(**kwargs)
        made.append(topology)
        try:
            return topology.start()
        except TopologyError as exc:
            pytest.fail(f"could not start a private Sentinel group: {exc}", pytrace=False)

    try:
        yield start
    finally:
        for topology in made:
            topology.close()
