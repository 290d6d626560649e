"""The store on a real Redis Cluster: threads spread over every primary, one round trip to
one node per save and per load, the single-index layout refused with a typed error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from agents_persistence import AgentStateSnapshot, AsyncRedisCheckpointer, RedisCheckpointer
from agents_persistence.errors import LegacyLayout, StoreUnavailable
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology
from redis.connection import Connection

from tests.support import unique_namespace

pytestmark = pytest.mark.redis


def _state(n: int) -> AgentStateSnapshot:
    return AgentStateSnapshot(scratchpad={"n": n}, files={"notes.md": "x" * 64})


def test_a_thousand_threads_spread_over_the_three_primaries(
    redis_cluster: RedisClusterTopology,
) -> None:
    store = RedisCheckpointer.from_url(redis_cluster.url, namespace=unique_namespace())
    try:
        ids = [f"thread-{i}" for i in range(1000)]
        results = store.save_many([store.prepare(tid, _state(i)) for i, tid in enumerate(ids)])
        assert all(not isinstance(r, Exception) and r.written for r in results)
        owners = Counter(redis_cluster.primary_for_key(store.keys.thread(tid)).port for tid in ids)
        shares = {port: count / len(ids) for port, count in owners.items()}
        print(f"threads per primary: {dict(owners)}")  # the figures, with -s
        assert len(shares) == 3
        assert all(0.20 <= share <= 0.46 for share in shares.values()), shares
        # each thread's record shares its slot with its index shard
        index_owners = {redis_cluster.primary_for_key(k).port for k in store.keys.index_keys}
        assert index_owners == set(owners)
        assert sorted(store.list_threads()) == sorted(ids)
        assert store.count_threads() == (1000, 0)
        assert store.drop_namespace() >= 1000
    finally:
        store.close()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The port of every round trip (one ``send_packed_command``) made during the test
    (a cluster client takes no ``connection_class``: the method is wrapped instead)."""
    log: list[int] = []
    send = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        send(self, command, check_health)  # type: ignore[no-untyped-call]
        log.append(int(self.port))

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return log


def test_a_save_and_a_load_are_one_round_trip_to_one_node(
    redis_cluster: RedisClusterTopology, trips: list[int]
) -> None:
    store = RedisCheckpointer.from_url(redis_cluster.url, namespace=unique_namespace())
    try:
        for i in range(3):  # warm up: connections, the layout, the scripts on every node
            store.save_state(f"warm-{i}", _state(i))
            store.load_state(f"warm-{i}")
        large = AgentStateSnapshot(files={"big": "".join(f"{i:x}" for i in range(30_000))})
        store.save_state("large", large)
        for tid in ("a", "b:c", "{tagged}", "zz"):
            owner = redis_cluster.primary_for_key(store.keys.thread(tid)).port
            trips.clear()
            store.save_state(tid, _state(1))
            assert trips == [owner]
            trips.clear()
            assert store.load_state(tid) == _state(1)
            assert trips == [owner]
        owner = redis_cluster.primary_for_key(store.keys.thread("large")).port
        trips.clear()
        store.save_state("large", large)  # staged: MULTI; SET; EVALSHA; EXEC on one node
        assert trips == [owner]
        store.drop_namespace()
    finally:
        store.close()


def test_the_async_store_runs_on_the_cluster_with_the_same_keys(
    redis_cluster: RedisClusterTopology,
) -> None:
    import asyncio

    namespace = unique_namespace()

    async def run() -> list[str]:
        async with AsyncRedisCheckpointer.from_url(redis_cluster.url, namespace=namespace) as a:
            for i in range(40):
                await a.save_state(f"t{i}", _state(i), version=i + 1)
            return [tid async for tid in a.iter_threads(page_size=7)]

    listed = asyncio.run(run())
    store = RedisCheckpointer.from_url(redis_cluster.url, namespace=namespace)
    try:
        assert sorted(listed) == sorted(f"t{i}" for i in range(40))
        checkpoint = store.load_checkpoint("t5")
        assert checkpoint is not None
        assert checkpoint.version == 6
        store.drop_namespace()
    finally:
        store.close()


def test_the_single_index_layout_is_refused_on_a_cluster(
    redis_cluster: RedisClusterTopology,
) -> None:
    namespace = unique_namespace()
    store = RedisCheckpointer.from_url(redis_cluster.url, namespace=namespace)
    raw = store.client
    try:
        raw.zadd(f"{namespace}:index", {"old": float("inf")})  # written by an earlier release
        with pytest.raises(LegacyLayout, match="single-index layout") as caught:
            store.load_state("old")
        assert caught.value.key == f"{namespace}:layout"
        raw.delete(f"{namespace}:index")
    finally:
        store.close()


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_the_langgraph_saver_takes_cluster_and_sentinel_urls(
    topology: str, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("langgraph")
    from agents_persistence.langgraph import RedisCheckpointSaver
    from langgraph.checkpoint.base import empty_checkpoint

    if topology == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_sentinel").url()
    saver = RedisCheckpointSaver.from_url(url, namespace=unique_namespace())
    try:
        config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
        checkpoint = empty_checkpoint()
        stored = saver.put(config, checkpoint, {"source": "input", "step": 0}, {})  # type: ignore[arg-type]
        got = saver.get_tuple(stored)
        assert got is not None
        assert got.checkpoint["id"] == checkpoint["id"]
    finally:
        saver.close()


def test_a_cluster_with_a_password_and_an_acl_user_never_prints_them(
    own_cluster: Callable[..., RedisClusterTopology],
) -> None:
    cluster = own_cluster(password="cluster-pw-7731")
    for node in cluster.nodes:  # an ACL user on every node
        node.client(password="cluster-pw-7731").acl_setuser(
            "agent", enabled=True, passwords=["+agent-pw-5519"], keys=["*"], commands=["+@all"]
        )
    assert "cluster-pw-7731" in cluster.url
    user_url = cluster.url.replace(":cluster-pw-7731@", "agent:agent-pw-5519@")
    for url in (cluster.url, user_url):
        store = RedisCheckpointer.from_url(url, namespace=unique_namespace())
        try:
            assert store.save_state("t", _state(1), version=1).written
            assert store.load_state("t") == _state(1)
            assert "pw" not in repr(store)
        finally:
            store.close()
    # a cluster client reads the slot map when it is built: a wrong password fails there
    with pytest.raises(StoreUnavailable) as caught:
        RedisCheckpointer.from_url(
            cluster.url.replace("cluster-pw-7731", "wrong-pw-0042"), namespace="n"
        )
    assert "wrong-pw-0042" not in str(caught.value)
    assert "wrong-pw-0042" not in repr(caught.value)
