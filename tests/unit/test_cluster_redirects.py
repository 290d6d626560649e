"""A Redis Cluster moving a slot under the store's per-node pipelines: ``ASK`` answers are
followed to the importing node (after ``ASKING``), a ``TRYAGAIN`` is retried for the whole
request instead of being reported as one save's error, and a transaction is never split
between two nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest
import redis.exceptions as rex
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    RedisCheckpointer,
    RetryPolicy,
    WriteResult,
)
from agents_persistence.checkpoint import WriteOutcome
from agents_persistence.redis_ops import Pipeline, SlotMoved, follow_ask, waited

pytestmark = pytest.mark.unit

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002, deadline=5.0)
IMPORTING = "127.0.0.1:7001"
WRITTEN, DUPLICATE = WriteOutcome.WRITTEN, WriteOutcome.DUPLICATE


def _ask(slot: int = 3999, node: str = IMPORTING) -> rex.AskError:
    return rex.AskError(f"{slot} {node}")


# -- follow_ask: what is resent, and where ----------------------------------------------------
def test_commands_answered_ask_go_to_the_importing_node_each_after_asking() -> None:
    request = Pipeline((("GET", "a"), ("GET", "b"), ("GET", "c")), raise_on_error=False)
    first = [b"1", _ask(), b"3"]
    asked = follow_ask(request, first)
    assert asked is not None
    assert (asked.host, asked.port, asked.positions) == ("127.0.0.1", 7001, (1,))
    assert asked.commands == (("ASKING",), ("GET", "b"))
    assert waited(request, asked.merge(first, [b"OK", b"2"])) == [b"1", b"2", b"3"]


def test_a_waited_request_counts_the_fewer_acknowledgements_of_the_two_nodes() -> None:
    request = Pipeline((("SET", "a", 1), ("SET", "b", 2)), raise_on_error=False, wait=(1, 100))
    first = [_ask(), b"OK", 1]
    asked = follow_ask(request, first)
    assert asked is not None
    assert asked.commands == (("ASKING",), ("SET", "a", 1), ("WAIT", 1, 100))
    assert asked.merge(first, [b"OK", b"OK", 1]) == [b"OK", b"OK", 1]
    with pytest.raises(rex.TryAgainError):  # AcksMissing: the importing node's write unacked
        waited(request, asked.merge(first, [b"OK", b"OK", 0]))


def test_a_transaction_refused_whole_is_resent_whole_after_asking() -> None:
    request = Pipeline((("GETRANGE", "k", 0, 3), ("GETRANGE", "k", 4, -1)), transaction=True)
    first = [b"OK", _ask(), _ask(), rex.ExecAbortError("EXECABORT")]
    asked = follow_ask(request, first)
    assert asked is not None
    assert asked.commands == (
        ("ASKING",),
        ("MULTI",),
        ("GETRANGE", "k", 0, 3),
        ("GETRANGE", "k", 4, -1),
        ("EXEC",),
    )
    resent = [b"OK", b"OK", b"QUEUED", b"QUEUED", [b"head", b"body"]]
    assert waited(request, asked.merge(first, resent)) == [b"head", b"body"]


def test_a_transaction_refused_at_exec_is_resent_whole() -> None:
    request = Pipeline((("GET", "k"),), transaction=True)
    asked = follow_ask(request, [b"OK", b"QUEUED", _ask()])
    assert asked is not None
    assert asked.commands[0] == ("ASKING",)


def test_a_transaction_with_keys_on_both_sides_is_retried_not_split() -> None:
    request = Pipeline((("SET", "s", 1), ("EVALSHA", "x", 1, "t")), transaction=True)
    with pytest.raises(SlotMoved):
        follow_ask(request, [b"OK", _ask(), b"QUEUED", rex.ExecAbortError("EXECABORT")])


def test_two_importing_nodes_or_a_moved_slot_are_retried() -> None:
    request = Pipeline((("GET", "a"), ("GET", "b")), raise_on_error=False)
    with pytest.raises(SlotMoved):
        follow_ask(request, [_ask(1, IMPORTING), _ask(2, "127.0.0.1:7002")])
    with pytest.raises(SlotMoved):
        follow_ask(request, [_ask(), rex.MovedError(f"2 {IMPORTING}")])
    assert follow_ask(request, [b"1", None]) is None


def test_tryagain_in_one_reply_concerns_the_whole_request() -> None:
    request = Pipeline((("EVALSHA", "x", 1, "a"), ("EVALSHA", "x", 1, "b")), raise_on_error=False)
    with pytest.raises(rex.TryAgainError):
        waited(request, [[0, b"1"], rex.TryAgainError("Multiple keys request during rehashing")])


# -- the store, over a fake cluster that moves a slot ------------------------------------------
class _Node:
    def __init__(self, name: str) -> None:
        self.name = name


class _MigratingFake(fakeredis.FakeRedis):
    """fakeredis answering as a cluster client would, every key on node ``a``; node ``a``
    answers the next script of a thread named in :attr:`refuse` (or the next command named
    there) with that error instead of running it. Every command a node gets is logged as
    ``(node, args)``."""

    nodes_manager = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refuse: dict[str, Exception] = {}
        self.log: list[tuple[str, tuple[Any, ...]]] = []

    def get_node_from_key(self, key: bytes | str) -> _Node:
        return _Node("a")

    def get_node(self, host: str, port: int) -> _Node:
        return _Node(f"{host}:{port}")

    def get_redis_connection(self, node: _Node) -> _NodeClient:
        return _NodeClient(self, node.name)


class _NodeClient:
    def __init__(self, fake: _MigratingFake, name: str) -> None:
        self.fake, self.name = fake, name

    def pipeline(self, transaction: bool = False) -> _NodePipeline:
        assert not transaction
        return _NodePipeline(self.fake, self.name)


class _NodePipeline:
    def __init__(self, fake: _MigratingFake, name: str) -> None:
        self.fake, self.name = fake, name
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def execute(self, raise_on_error: bool = False) -> list[Any]:
        replies: list[Any] = []
        for args in self.commands:
            self.fake.log.append((self.name, args))
            # a save script: EVALSHA sha 3 <3 keys> version ttl thread_id [record]
            thread = str(args[8]) if args[0] == "EVALSHA" else str(args[0])
            if args[0] == "ASKING":
                replies.append(b"OK")
            elif self.name == "a" and thread in self.fake.refuse:
                replies.append(self.fake.refuse.pop(thread))
            else:
                pipe = self.fake.pipeline(transaction=False)
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                replies.append(pipe.execute(raise_on_error=False)[0])
        return replies


def _store(fake: _MigratingFake) -> RedisCheckpointer:
    store = RedisCheckpointer(fake, namespace="ns", retry=FAST)
    store._ops.cluster = True  # as with a RedisCluster client
    store.save_many(_saves(store, "warm"))  # the script loaded, the layout recorded
    fake.log.clear()
    return store


def _saves(store: RedisCheckpointer, prefix: str = "t") -> list[Any]:
    state = AgentStateSnapshot(scratchpad={"n": 1})
    return [store.prepare(f"{prefix}{i}", state, version=5) for i in range(4)]


def _scripts_to(fake: _MigratingFake, node: str, thread: str) -> int:
    return sum(1 for n, args in fake.log if n == node and args[0] == "EVALSHA" and thread in args)


def test_a_save_answered_tryagain_in_a_batch_is_retried_not_reported_as_its_error() -> None:
    fake = _MigratingFake()
    store = _store(fake)
    fake.refuse["t2"] = rex.TryAgainError("Multiple keys request during rehashing of slot")
    results = store.save_many(_saves(store))
    assert all(isinstance(r, WriteResult) for r in results), results
    assert store.stored_versions(["t0", "t1", "t2", "t3"]) == dict.fromkeys(
        ["t0", "t1", "t2", "t3"], 5
    )
    assert _scripts_to(fake, "a", "t2") == 2  # the whole batch resent once
    outcomes = [r.outcome for r in results if isinstance(r, WriteResult)]
    assert outcomes == [DUPLICATE, DUPLICATE, WRITTEN, DUPLICATE]  # the rest written at first


def test_a_load_of_a_key_that_left_its_migrating_slot_follows_ask() -> None:
    fake = _MigratingFake()
    store = _store(fake)
    ids = ["t0", "t1", "t2"]
    store.save_many(_saves(store)[:3])
    fake.log.clear()
    fake.refuse["GETRANGE"] = _ask()  # the first version read: the key has left node a
    assert store.stored_versions(ids) == dict.fromkeys(ids, 5)
    resent = [args for node, args in fake.log if node == IMPORTING]
    assert resent[0] == ("ASKING",)
    assert resent[1][0] == "GETRANGE"
    assert len(resent) == 2


def test_a_save_answered_ask_in_a_batch_is_sent_to_the_importing_node() -> None:
    fake = _MigratingFake()
    store = _store(fake)
    fake.refuse["t1"] = _ask()
    results = store.save_many(_saves(store))
    assert [r.outcome for r in results if isinstance(r, WriteResult)] == [WRITTEN] * 4
    i = next(i for i, (n, args) in enumerate(fake.log) if n == IMPORTING and args == ("ASKING",))
    assert fake.log[i + 1][0] == IMPORTING
    assert "t1" in fake.log[i + 1][1]
    assert _scripts_to(fake, "a", "t1") == 1  # followed, not retried
    assert _scripts_to(fake, "a", "t0") == 1
    assert store.load_state("t1") == AgentStateSnapshot(scratchpad={"n": 1})


# -- the asyncio store's driver ----------------------------------------------------------------
@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _AsyncMigratingFake(fakeredis.aioredis.FakeRedis):
    """The asyncio twin of :class:`_MigratingFake`'s routing (its node pipelines are
    replaced in the test: the store builds real node clients from the nodes otherwise)."""

    nodes_manager = None

    def get_node_from_key(self, key: bytes | str) -> _Node:
        return _Node("a")

    def get_node(self, host: str, port: int) -> _Node:
        return _Node(f"{host}:{port}")


@pytest.mark.anyio
async def test_the_asyncio_store_follows_ask_and_retries_tryagain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _AsyncMigratingFake()
    store = AsyncRedisCheckpointer(fake, namespace="ns", retry=FAST)
    store._ops.cluster = True
    refuse: dict[str, Exception] = {}
    log: list[tuple[str, tuple[Any, ...]]] = []

    async def node_pipeline(node: _Node, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        replies: list[Any] = []
        for args in commands:
            log.append((node.name, args))
            thread = str(args[8]) if args[0] == "EVALSHA" else None
            if args[0] == "ASKING":
                replies.append(b"OK")
            elif node.name == "a" and thread in refuse:
                replies.append(refuse.pop(thread))
            else:
                pipe = fake.pipeline(transaction=False)
                pipe.execute_command(*args)
                replies.append((await pipe.execute(raise_on_error=False))[0])
        return replies

    monkeypatch.setattr(store, "_node_pipeline", node_pipeline)
    state = AgentStateSnapshot(scratchpad={"n": 1})
    await store.save_many([store.prepare(f"warm{i}", state) for i in range(2)])
    log.clear()
    refuse["t1"] = _ask()
    refuse["t2"] = rex.TryAgainError("Multiple keys request during rehashing of slot")
    saves = [store.prepare(f"t{i}", state, version=5) for i in range(4)]
    results = await store.save_many(saves)
    assert all(isinstance(r, WriteResult) for r in results), results
    assert next(args for node, args in log if node == IMPORTING) == ("ASKING",)
    assert await store.stored_versions(["t0", "t1", "t2", "t3"]) == dict.fromkeys(
        ["t0", "t1", "t2", "t3"], 5
    )
    await store.aclose()
