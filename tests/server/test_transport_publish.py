"""The layer's Redis transport publishes what kombu's own Redis transport publishes, byte for
byte, through one redis client per channel; on a private redis-server."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import kombu
import pytest
import redis
from agents_persistence.tasks.broker import redis_transport
from agents_persistence.tasks.broker.redis_transport import envelope_json
from agents_persistence.tasks.devtools.redis_server import RedisServer
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

pytestmark = pytest.mark.redis

#: A header that is not ASCII, one named like the body, a float, a nested list.
HEADERS = {"task": "t", "note": "é ✓", "body": "", "ratio": 0.1, "limits": [None, 3]}


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()


def _connection(server: RedisServer, transport: type[Any]) -> kombu.Connection:
    return kombu.Connection(server.url, transport=transport)


def _publish(conn: kombu.Connection, queue: str, body: Any, **options: Any) -> None:
    producer = kombu.Producer(conn.default_channel)
    producer.publish(body, routing_key=queue, headers=HEADERS, serializer="json", **options)


def test_a_message_is_the_bytes_kombus_transport_pushes(
    server: RedisServer, raw: redis.Redis
) -> None:
    body = {"entries": [{"state": json.dumps({"files": {"a.md": "x" * 5000}})}], "n": 1}
    pushed: list[Any] = []
    for transport in (redis_transport.Transport, kombu_redis.Transport):
        with (
            _connection(server, transport) as conn,
            mock.patch.object(kombu_redis.Channel, "_next_delivery_tag", return_value="tag"),
        ):
            _publish(conn, "q", body)
        pushed.append(raw.lpop("q"))
    ours, theirs = pushed
    assert ours is not None
    assert ours == theirs
    message = json.loads(ours)
    assert message["headers"] == HEADERS
    assert json.loads(base64.b64decode(message["body"])) == body


def test_one_redis_client_serves_a_channel_until_its_pool_changes(
    server: RedisServer, raw: redis.Redis
) -> None:
    with _connection(server, redis_transport.Transport) as conn:
        channel: Any = conn.default_channel
        with mock.patch.object(
            redis_transport.Channel, "_create_client", autospec=True,
            side_effect=getattr(kombu_redis.Channel, "_create_client"),  # noqa: B009
        ) as created:  # fmt: skip
            for i in range(3):
                _publish(conn, "q", {"i": i})
            assert created.call_count == 1
            channel._disconnect_pools()  # as kombu does when the connection drops
            _publish(conn, "q", {"i": 3})
            assert created.call_count == 2
            with channel.conn_or_acquire(raw) as given:  # a client passed in is used as is
                assert given is raw
    assert [
        json.loads(base64.b64decode(json.loads(m)["body"])) for m in raw.lrange("q", 0, -1)
    ] == [{"i": i} for i in (3, 2, 1, 0)]


def test_a_queue_with_an_expiry_keeps_it(server: RedisServer, raw: redis.Redis) -> None:
    name = f"expiring-{uuid.uuid4().hex[:8]}"
    with _connection(server, redis_transport.Transport) as conn:
        kombu.Queue(name, expires=600)(conn.default_channel).declare()
        _publish(conn, name, {"x": 1})
    assert raw.llen(name) == 1
    assert 0 < raw.pttl(name) <= 600_000


@pytest.mark.parametrize(
    "properties",
    [
        {"body_encoding": "base64", "delivery_info": {}},
        {"body_encoding": None},  # not base64: kombu's encoder as it is
        {},
    ],
)
def test_the_envelope_is_kombus_json_text(properties: dict[str, Any]) -> None:
    message = {
        "body": base64.b64encode(b"\x00\xff" * 300).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": HEADERS,
        "properties": properties,
    }
    assert envelope_json(message) == dumps(message)
    assert envelope_json({**message, "body": b"bytes"}) == dumps({**message, "body": b"bytes"})
