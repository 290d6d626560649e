"""A real Celery worker storing into a Redis Cluster (the broker: RabbitMQ, as kombu cannot
use a cluster), with ``replica_acks=1``: every hand-off ends durable in the cluster."""

from __future__ import annotations

import pytest
from agents_persistence import AgentStateSnapshot
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology

from tests.integration.conftest import StackFactory

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_a_worker_stores_hand_offs_in_a_cluster(
    stack_factory: StackFactory, rabbitmq_url: str, redis_cluster: RedisClusterTopology
) -> None:
    stack = stack_factory(redis_url=redis_cluster.url, broker_url=rabbitmq_url, replica_acks=1)
    stack.worker()
    client = stack.client(mode="buffered")
    threads = [f"agent-{i}" for i in range(60)]
    handles = [
        client.save_state(tid, AgentStateSnapshot(scratchpad={"step": step}), version=step)
        for step in (1, 2)
        for tid in threads
    ]
    client.flush(timeout=120)
    assert all(h.version in (1, 2) for h in handles)
    held = stack.store.stored_versions(threads)
    assert held == dict.fromkeys(threads, 2)
    assert sorted(stack.store.list_threads()) == sorted(threads)
    owners = {redis_cluster.primary_for_key(stack.store.keys.thread(t)).port for t in threads}
    assert len(owners) == 3  # one namespace, spread over every primary
    stack.store.drop_namespace()
