"""A broker behind Redis Sentinel: a hand-off returns only once the replica holds the
message (``broker_replica_acks``, which follows ``replica_acks`` there); with the replica
stopped the caller is told (HandOffError) instead of being told the message is safe."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from agents_persistence import AgentStateSnapshot, HandOffError, RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.tasks.devtools.topologies import RedisSentinelTopology

pytestmark = [pytest.mark.redis, pytest.mark.integration]

BROKER_DB = 1


@contextmanager
def _client(
    group: RedisSentinelTopology, **fields: Any
) -> Iterator[tuple[CeleryCheckpointer, Settings]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None,
        redis_url=group.url(),
        broker_url=group.url(db=BROKER_DB),  # the store's spelling: the service in the path
        namespace=f"sb-{tag}",
        queue=f"sentinel-broker-{tag}",
        replica_acks=1,
        replica_ack_timeout_seconds=0.2,
        publish_timeout_seconds=1.0,
        publish_max_retries=1,
        **fields,
    )
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    client = CeleryCheckpointer(store, app)
    try:
        yield client, settings
    finally:
        client.close(timeout=2.0)
        app.close()
        store.close()


def test_a_hand_off_returns_only_once_the_replica_holds_it(
    own_sentinel: Callable[..., RedisSentinelTopology],
) -> None:
    group = own_sentinel()
    replica_node = group.replicas()[0]
    replica = replica_node.client(db=BROKER_DB)
    state = AgentStateSnapshot(scratchpad={"step": 1})
    with _client(group) as (client, settings):
        queue = settings.queue
        assert settings.broker_replica_acks == 1
        client.save_state("t", state, version=1)
        assert replica.llen(queue) == 1  # returned: the replica holds the message
        replica_node.pause()  # SIGSTOP: it acknowledges nothing
        try:
            with pytest.raises(HandOffError):
                client.save_state("t", state, version=2)
        finally:
            replica_node.resume()
        client.save_state("t", state, version=3)
    with _client(group, broker_replica_acks=0) as (unchecked, _):
        replica_node.pause()
        try:
            unchecked.save_state("u", state, version=1)  # accepted by the primary alone
        finally:
            replica_node.resume()
    replica.close()


def test_the_demo_removes_its_queue_from_a_sentinel_broker(
    redis_sentinel: RedisSentinelTopology,
) -> None:
    from agents_persistence.tasks.cli.demo import _remove_demo_queue

    with _client(redis_sentinel) as (client, settings):
        client.save_state("t", AgentStateSnapshot(scratchpad={"step": 1}), version=1)
        primary = redis_sentinel.primary().client(db=BROKER_DB)
        keys = (settings.queue, f"_kombu.binding.{settings.queue}")
        assert primary.exists(*keys) == 2
        _remove_demo_queue(settings)
        assert primary.exists(*keys) == 0
        primary.close()
