"""What only an async store can get wrong, on fakeredis and on the real server (the rest of
the contract runs through ``backend``'s ``async-*`` parameters): ``iter_threads`` as an
async iterator, many concurrent saves of one thread, saves cancelled mid-flight, records
shared with the blocking store, retries that never block the loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Callable

import fakeredis
import fakeredis.aioredis
import pytest
import redis
import redis.exceptions as rex
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    CorruptState,
    RedisCheckpointer,
    RetryPolicy,
    StoreFull,
    StoreUnavailable,
    WriteOutcome,
)
from agents_persistence.config import Settings

from tests.support import free_port, namespace_keys, sample_state

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002, deadline=5.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Servers:
    """One server seen through both clients: the async store's and a blocking raw one."""

    def __init__(self, kind: str, raw: redis.Redis, make: Callable[..., AsyncRedisCheckpointer]):
        self.kind, self.raw, self._make = kind, raw, make
        self.made: list[AsyncRedisCheckpointer] = []

    def store(self, namespace: str, **kwargs: object) -> AsyncRedisCheckpointer:
        store = self._make(namespace, **kwargs)
        self.made.append(store)
        return store

    def blocking(self, namespace: str) -> RedisCheckpointer:
        """A blocking store on the same server (shares the raw client)."""
        return RedisCheckpointer(self.raw, namespace=namespace)


@pytest.fixture(
    params=[
        pytest.param("fakeredis", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[Servers]:
    raw: redis.Redis
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        raw = fakeredis.FakeRedis(server=server)

        def make(namespace: str, **kwargs: object) -> AsyncRedisCheckpointer:
            # fakeredis's pool is not a blocking one: room for every concurrent call here
            client = fakeredis.aioredis.FakeRedis(server=server, max_connections=1000)
            return AsyncRedisCheckpointer(client, namespace=namespace, **kwargs)  # type: ignore[arg-type]

    else:
        url: str = request.getfixturevalue("real_redis_url")
        raw = redis.Redis.from_url(url, socket_timeout=5.0)

        def make(namespace: str, **kwargs: object) -> AsyncRedisCheckpointer:
            return AsyncRedisCheckpointer.from_url(url, namespace=namespace, **kwargs)  # type: ignore[arg-type]

    made = Servers(request.param, raw, make)
    try:
        yield made
    finally:
        for store in made.made:
            await store.aclose()
        raw.close()


@pytest.fixture
async def astore(servers: Servers, namespace: str) -> AsyncRedisCheckpointer:
    return servers.store(namespace)


# -- listing --------------------------------------------------------------------------------------
async def test_iter_threads_is_an_async_iterator(astore: AsyncRedisCheckpointer) -> None:
    ids = [f"t{i:04d}" for i in range(1050)]
    saves = [astore.prepare(tid, sample_state(tid), version=1) for tid in ids]
    assert all(not isinstance(r, Exception) and r.written for r in await astore.save_many(saves))
    pages = astore.iter_threads(page_size=7)
    assert isinstance(pages, AsyncIterator)
    first = await anext(pages)
    rest = [tid async for tid in pages]
    assert sorted([first, *rest]) == ids
    assert sorted(await astore.list_threads()) == ids
    with pytest.raises(ValueError, match="page_size"):
        await anext(astore.iter_threads(page_size=0))


# -- concurrency ----------------------------------------------------------------------------------
async def test_concurrent_saves_of_one_thread_newest_wins_none_regress(
    astore: AsyncRedisCheckpointer,
) -> None:
    versions = list(range(1, 101))
    random.Random(7).shuffle(versions)
    seen: list[int] = []
    writing = True

    async def watch() -> None:
        while writing:
            checkpoint = await astore.load_checkpoint("t")
            if checkpoint is not None:
                seen.append(checkpoint.version)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(astore.save_state("t", sample_state(f"v{v}"), version=v) for v in versions)
        )
    finally:
        writing = False
        await watcher

    assert [r.version for r in results] == versions
    assert all(r.current_version >= r.version for r in results)
    top = next(r for r in results if r.version == 100)
    assert top.outcome is WriteOutcome.WRITTEN
    assert {r.outcome for r in results} <= {WriteOutcome.WRITTEN, WriteOutcome.STALE}
    assert seen == sorted(seen)  # what a reader saw never went back
    checkpoint = await astore.load_checkpoint("t")
    assert checkpoint is not None
    assert (checkpoint.version, checkpoint.state) == (100, sample_state("v100"))


# -- cancellation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [100, 60_000], ids=["inline", "staged"])
async def test_a_cancelled_save_leaves_the_old_record_or_the_new_one_whole(
    servers: Servers, astore: AsyncRedisCheckpointer, size: int
) -> None:
    def state(version: int) -> AgentStateSnapshot:  # incompressible: 60 KB stays staged
        return AgentStateSnapshot(files={"f": f"{version}:" + secrets.token_hex(size // 2)})

    stored = state(1)
    await astore.save_state("t", stored, version=1)
    for version in range(2, 42):
        new = state(version)
        task = asyncio.create_task(astore.save_state("t", new, version=version))
        turns = version % 8  # 0: cancelled before it ran; else while in flight
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        checkpoint = await astore.load_checkpoint("t")  # a reply left behind would show here
        assert checkpoint is not None
        assert (checkpoint.version, checkpoint.state) in ((version, new), (version - 1, stored))
        if checkpoint.version == version - 1:  # not applied: apply it now, whole
            assert (await astore.save_state("t", new, version=version)).written
        else:
            assert turns > 0, "a save cancelled before it ran was applied"
        stored = new
    keys = namespace_keys(servers.raw, astore.namespace)  # no staged copy left behind
    layout = astore.keys
    index = layout.index_of(layout.shard("t"))
    assert keys == sorted(k.encode() for k in (layout.layout, index, layout.thread("t")))


# -- the same records as the blocking store -------------------------------------------------------
async def test_records_are_shared_with_the_blocking_store(
    servers: Servers, astore: AsyncRedisCheckpointer
) -> None:
    blocking = servers.blocking(astore.namespace)
    await astore.save_state("from-async", sample_state("a"), version=5)
    blocking.save_state("from-sync", sample_state("s"), version=7)
    assert blocking.load_state("from-async") == sample_state("a")
    loaded = await astore.load_checkpoint("from-sync")
    assert loaded is not None
    assert (loaded.version, loaded.state) == (7, sample_state("s"))
    assert blocking.stored_versions(["from-async", "from-sync"]) == await astore.stored_versions(
        ["from-async", "from-sync"]
    )
    await astore.delete_thread("from-sync")
    assert blocking.save_state("from-sync", sample_state(), version=7).stale
    assert sorted(blocking.list_threads()) == sorted(await astore.list_threads())


async def test_foreign_values_are_corrupt_state_for_their_thread_only(
    servers: Servers, astore: AsyncRedisCheckpointer
) -> None:
    await astore.save_state("good", sample_state("good"), version=1)
    servers.raw.rpush(astore.keys.thread("a-list"), b"x")  # WRONGTYPE
    servers.raw.set(astore.keys.thread("garbage"), b"AP1?not a header")
    for tid in ("a-list", "garbage"):
        with pytest.raises(CorruptState) as info:
            await astore.load_state(tid)
        assert info.value.thread_id == tid
    with pytest.raises(CorruptState):
        await astore.save_state("a-list", sample_state(), version=2)
    results = await astore.save_many(
        [astore.prepare(t, sample_state(t), version=3) for t in ("a-list", "fine")]
    )
    assert isinstance(results[0], CorruptState)
    assert not isinstance(results[1], Exception)
    assert results[1].written
    assert await astore.load_state("good") == sample_state("good")


@pytest.mark.redis
async def test_from_settings(real_redis: redis.Redis, real_redis_url: str, namespace: str) -> None:
    settings = Settings(
        _env_file=None, redis_url=real_redis_url, namespace=namespace, ttl_seconds=30
    )
    async with AsyncRedisCheckpointer.from_settings(settings) as store:
        assert (store.namespace, store.ttl_ms, store.retry) == (
            namespace,
            30_000,
            settings.build_retry_policy(),
        )
        await store.save_state("t", sample_state("s"))
        assert await store.load_state("t") == sample_state("s")
        assert 0 < real_redis.pttl(store.keys.thread("t")) <= 30_000


# -- scripts and outages --------------------------------------------------------------------------
@pytest.mark.unit
async def test_lost_scripts_are_loaded_again() -> None:
    client = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
    async with AsyncRedisCheckpointer(client, namespace="n") as store:
        await store.save_state("t", sample_state("1"), version=1)
        await client.script_flush()
        assert (await store.save_state("t", sample_state("2"), version=2)).written
        await client.script_flush()
        assert (await store.delete_thread("t")).written
        await client.script_flush()
        assert await store.list_threads() == []


@pytest.mark.unit
async def test_an_unreachable_store_is_retried_without_blocking_the_loop() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    slow = RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.1, deadline=5.0)
    url = f"redis://127.0.0.1:{free_port()}"
    async with AsyncRedisCheckpointer.from_url(url, namespace="n", retry=slow) as store:
        with pytest.raises(StoreUnavailable, match="load: store unavailable after 4 attempts"):
            await store.load_state("t")
    stop.set()
    await ticker
    assert ticks >= 10  # the backoff (>= 0.1 s in all) was slept on the loop, not in it


class Flaky:
    """An async call failing with ``error`` the first ``failures`` times."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("error", "failures", "raised", "calls"),
    [
        pytest.param(rex.ConnectionError("refused"), 3, None, 4, id="transient-recovers"),
        pytest.param(rex.ConnectionError("refused"), 99, StoreUnavailable, 4, id="gives-up"),
        pytest.param(rex.ResponseError("WRONGTYPE"), 1, rex.ResponseError, 1, id="permanent"),
        pytest.param(
            rex.AuthenticationError("WRONGPASS"), 1, rex.AuthenticationError, 1, id="auth"
        ),
        pytest.param(rex.OutOfMemoryError("OOM"), 1, StoreFull, 1, id="oom"),
    ],
)
async def test_acall_keeps_the_blocking_policy(
    error: Exception, failures: int, raised: type[Exception] | None, calls: int
) -> None:
    flaky = Flaky(failures, error)
    if raised is None:
        assert await FAST.acall("op", flaky) == "ok"
    else:
        with pytest.raises(raised):
            await FAST.acall("op", flaky)
    assert flaky.calls == calls


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "connection"),
    [
        ("redis://127.0.0.1:1/0", "Connection"),
        ("rediss://127.0.0.1:1/0", "SSLConnection"),
        ("unix:///tmp/nothing.sock?db=0", "UnixDomainSocketConnection"),
    ],
)
async def test_every_url_the_blocking_store_takes(url: str, connection: str) -> None:
    blocking = RedisCheckpointer.from_url(url)
    async with AsyncRedisCheckpointer.from_url(url) as store:
        kinds = [
            c.connection_pool.connection_class.__name__ for c in (blocking.client, store.client)
        ]
    blocking.close()
    assert kinds == [connection, connection]
