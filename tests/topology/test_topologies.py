"""The private topologies form as they say, and store URLs reach them."""

from __future__ import annotations

import pytest
import redis
import redis.cluster
from agents_persistence.connect import blocking_client, parse_store_url
from agents_persistence.errors import StoreMisconfigured
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    cluster_port,
)

pytestmark = pytest.mark.redis


def test_cluster_has_three_primaries_each_with_a_linked_replica(
    redis_cluster: RedisClusterTopology,
) -> None:
    primaries = redis_cluster.primaries_now()
    assert len(primaries) == 3
    ranges = redis_cluster.slot_ranges()
    assert sorted(ranges) == sorted(p.port for p in primaries)
    assert sum(end - start + 1 for rs in ranges.values() for start, end in rs) == 16384
    for node in redis_cluster.nodes:
        assert node.port < 55535  # its bus port (+10000) is a valid port
        info = node.client().info("replication")
        if info["role"] == "slave":
            assert info["master_link_status"] == "up"
            assert info["master_port"] in ranges
        else:
            assert info["connected_slaves"] >= 1


def test_cluster_port_leaves_room_for_the_bus_port() -> None:
    taken: set[int] = set()
    for _ in range(20):
        port = cluster_port(taken)
        assert port + 10000 < 65536
        assert port not in taken
        taken |= {port, port + 10000}


def test_a_cluster_url_builds_a_cluster_client_that_reaches_every_primary(
    redis_cluster: RedisClusterTopology,
) -> None:
    client = blocking_client(redis_cluster.url, socket_timeout=5.0)
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        keys = [f"topology-url:{i}" for i in range(60)]
        for key in keys:
            client.set(key, key)
        owners = {redis_cluster.primary_for_key(k).port for k in keys}
        assert len(owners) == 3  # 60 keys land on every primary
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
        client.delete(*keys)
    finally:
        client.close()


def test_a_sentinel_url_reaches_the_primary_with_its_password(
    redis_sentinel: RedisSentinelTopology,
) -> None:
    url = redis_sentinel.url()
    assert redis_sentinel.password is not None
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.service, parsed.db) == ("sentinel", "mymaster", 0)
    assert redis_sentinel.password not in repr(parsed)
    assert redis_sentinel.password not in parsed.redacted
    client = blocking_client(url, socket_timeout=5.0)
    assert isinstance(client, redis.Redis)
    try:
        client.set("topology-sentinel:k", "v")
        assert client.info("replication")["role"] == "master"
        primary = redis_sentinel.primary().client(password=redis_sentinel.password)
        assert primary.get("topology-sentinel:k") == b"v"
        assert redis_sentinel.password not in repr(client)
        client.delete("topology-sentinel:k")
    finally:
        client.close()


def test_a_wrong_sentinel_password_fails_without_printing_it(
    redis_sentinel: RedisSentinelTopology,
) -> None:
    url = redis_sentinel.url().replace("topology-secret", "not-the-pw-4242")
    client = blocking_client(url, socket_timeout=5.0)
    with pytest.raises(redis.AuthenticationError) as caught:
        client.ping()
    assert "not-the-pw-4242" not in str(caught.value)
    client.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:26379", "service"),
        ("redis+sentinel://h:26379/svc/x", "not a number"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis+cluster://:pw-123@h:notaport", "not a number"),
        ("redis+cluster://h:1,,h:2", "empty host"),
        ("mongodb://h", "unknown scheme"),
    ],
)
def test_bad_store_urls_are_refused_with_the_reason_and_no_password(url: str, why: str) -> None:
    with pytest.raises(StoreMisconfigured) as caught:
        parse_store_url(url)
    assert why in str(caught.value)
    assert "pw-123" not in str(caught.value)


def test_store_urls_parse_nodes_credentials_and_tls() -> None:
    parsed = parse_store_url("rediss+cluster://alice:s%40cret@a:7000,b:7001,[::1]:7002")
    assert parsed.kind == "cluster"
    assert parsed.tls
    assert parsed.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert parsed.options["username"] == "alice"
    assert parsed.options["password"] == "s@cret"
    assert parsed.options["ssl"] is True
    sentinel = parse_store_url(
        "redis+sentinel://:pw@s1,s2:26380/svc/2?sentinel_password=spw&socket_timeout=3"
    )
    assert sentinel.nodes == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.tls) == ("svc", 2, False)
    assert sentinel.sentinel_options == {"password": "spw"}
    assert sentinel.options["socket_timeout"] == 3.0
    assert "spw" not in sentinel.redacted
    assert "pw@" not in sentinel.redacted


@pytest.mark.parametrize("missing", ["redis-server", "redis-cli"])
def test_missing_binaries_fail_under_ci_and_skip_locally(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    from tests.support import topologies

    if missing == "redis-server":
        monkeypatch.setattr(topologies, "find_redis_server", lambda: None)
    else:
        monkeypatch.setattr(topologies, "find_redis_cli", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"no {missing}.*CI=true"):
        topologies.require_topology_binaries()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=f"no {missing}"):
        topologies.require_topology_binaries()
