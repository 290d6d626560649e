"""``replica_acks``: a write returns only once that many replicas hold it (WAIT in the same
round trip); short of that it is retried, then ReplicaAcksMissing, never reported stored."""

from __future__ import annotations

import asyncio

import pytest
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    RedisCheckpointer,
    ReplicaAcksMissing,
    RetryPolicy,
    StoreUnavailable,
)
from agents_persistence.config import Settings
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
)

from tests.support import RedisServer, unique_namespace

pytestmark = pytest.mark.redis

_FAST = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.02, deadline=5.0)


def _state(n: int) -> AgentStateSnapshot:
    return AgentStateSnapshot(scratchpad={"n": n})


def test_without_replicas_a_write_is_retried_then_refused_as_not_durable(
    redis_server: RedisServer,
) -> None:
    store = RedisCheckpointer.from_url(
        redis_server.url,
        namespace=unique_namespace(),
        replica_acks=1,
        replica_ack_timeout=0.05,
        retry=_FAST,
    )
    try:
        with pytest.raises(ReplicaAcksMissing) as caught:
            store.save_state("t", _state(1), version=5)
        assert (caught.value.acks, caught.value.required) == (0, 1)
        assert isinstance(caught.value, StoreUnavailable)  # callers retry it later
        with pytest.raises(ReplicaAcksMissing):
            store.delete_thread("t")
        large = AgentStateSnapshot(files={"big": "".join(f"{i:x}" for i in range(30_000))})
        with pytest.raises(ReplicaAcksMissing):
            store.save_many([store.prepare("big", large), store.prepare("small", _state(2))])
    finally:
        store.close()


def test_settings_carry_replica_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTS_PERSISTENCE_REPLICA_ACKS", "2")
    monkeypatch.setenv("AGENTS_PERSISTENCE_REPLICA_ACK_TIMEOUT_SECONDS", "0.5")
    settings = Settings()
    assert (settings.replica_acks, settings.replica_ack_timeout_seconds) == (2, 0.5)
    assert Settings.model_fields["replica_acks"].default == 0


def test_sentinel_primary_waits_for_its_replica(redis_sentinel: RedisSentinelTopology) -> None:
    settings = Settings(
        redis_url=redis_sentinel.url(), namespace=unique_namespace(), replica_acks=1
    )
    store = RedisCheckpointer.from_settings(settings)
    try:
        assert store.save_state("t", _state(1), version=1).written
        assert store.save_many([store.prepare(f"b{i}", _state(i)) for i in range(20)])
        assert store.delete_thread("t").outcome.name == "WRITTEN"
        replica = redis_sentinel.replicas()[0].client(password=redis_sentinel.password)
        assert replica.exists(store.keys.thread("b3"))  # acknowledged: the replica has it
        store.drop_namespace()
    finally:
        store.close()


def test_cluster_primaries_wait_for_their_replicas(redis_cluster: RedisClusterTopology) -> None:
    namespace = unique_namespace()
    store = RedisCheckpointer.from_url(redis_cluster.url, namespace=namespace, replica_acks=1)
    large = AgentStateSnapshot(files={"big": "".join(f"{i:x}" for i in range(30_000))})
    try:
        assert store.save_state("t", _state(1), version=1).written
        batch = [store.prepare(f"b{i}", _state(i)) for i in range(50)]
        results = store.save_many([*batch, store.prepare("large", large)])
        assert all(not isinstance(r, Exception) and r.written for r in results)
        assert store.delete_thread("t").outcome.name == "WRITTEN"

        async def run() -> bool:
            async with AsyncRedisCheckpointer.from_url(
                redis_cluster.url, namespace=namespace, replica_acks=1
            ) as astore:
                return (await astore.save_state("a", _state(3), version=3)).written

        assert asyncio.run(run())
        assert store.load_state("large") == large
        store.drop_namespace()
    finally:
        store.close()
