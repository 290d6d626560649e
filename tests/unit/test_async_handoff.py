"""AsyncCeleryCheckpointer in eager mode (the real tasks run inline on the publishing
thread): the same hand-off as the blocking client, awaited, and never on the event loop.

Eager mode proves the logic, not the reliability: ``tests/integration/test_async_handoff.py``
runs it against a real worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, Literal

import fakeredis
import fakeredis.aioredis
import pytest
from agents_persistence import (
    AsyncRedisCheckpointer,
    FlushTimeout,
    HandOffError,
    InvalidThreadId,
    RedisCheckpointer,
)
from agents_persistence.config import Settings
from agents_persistence.tasks import AsyncCeleryCheckpointer, AsyncHandOff, CeleryCheckpointer
from agents_persistence.tasks.worker.app import create_app

from tests.support import sample_state

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

Mode = Literal["durable", "buffered"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Ticker:
    """Counts 1 ms ticks of the event loop while it runs: a loop blocked by a call stops
    the count."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.001)

    async def advanced(self, ticks: int) -> None:
        """Return once the loop ticked ``ticks`` more times (it is not blocked)."""
        target = self.ticks + ticks
        while self.ticks < target:
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def settings(namespace: str) -> Settings:
    return Settings(_env_file=None, eager=True, namespace=namespace, broker_url="memory://")


def make_client(
    server: fakeredis.FakeServer, settings: Settings, mode: Mode, **updates: Any
) -> AsyncCeleryCheckpointer:
    settings = settings.model_copy(update={"handoff_mode": mode, **updates})
    blocking = RedisCheckpointer(fakeredis.FakeRedis(server=server), namespace=settings.namespace)
    handoff = CeleryCheckpointer(blocking, create_app(settings, store=blocking))
    client = fakeredis.aioredis.FakeRedis(server=server, max_connections=1000)
    return AsyncCeleryCheckpointer(
        handoff, AsyncRedisCheckpointer(client, namespace=settings.namespace)
    )


@pytest.fixture(params=["durable", "buffered"])
async def client(
    request: pytest.FixtureRequest, server: fakeredis.FakeServer, settings: Settings
) -> AsyncIterator[AsyncCeleryCheckpointer]:
    async with make_client(server, settings, request.param) as made:
        yield made
        await made.store.aclose()


# -- the contract, awaited ------------------------------------------------------------------------
async def test_save_wait_load_list_delete(client: AsyncCeleryCheckpointer) -> None:
    handle = await client.save_state("t", sample_state("one"), version=3)
    assert (handle.thread_id, handle.version) == ("t", 3)
    await handle.wait(timeout=10)
    assert await client.load_state("t") == sample_state("one")
    checkpoint = await client.load_checkpoint("t")
    assert checkpoint is not None
    assert checkpoint.version == 3
    assert await client.list_threads() == ["t"]
    assert [tid async for tid in client.iter_threads(page_size=1)] == ["t"]
    deleted = await client.delete_thread("t")
    assert deleted.written
    assert await client.load_state("t") is None
    assert client.handoff.pending == {}


async def test_concurrent_hand_offs_flush_to_the_newest(client: AsyncCeleryCheckpointer) -> None:
    async def agent(tid: str) -> None:
        for version in range(1, 4):
            await client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)

    threads = [f"t-{i}" for i in range(50)]
    await asyncio.gather(*(agent(tid) for tid in threads))
    await client.flush(timeout=30)
    assert client.handoff.pending == {}
    assert await client.store.stored_versions(threads) == dict.fromkeys(threads, 3)
    for tid in threads:
        assert await client.load_state(tid) == sample_state(f"{tid}@3")
    assert client.handoff.handed_off == 150


async def test_bad_input_fails_before_anything_is_handed_off(
    client: AsyncCeleryCheckpointer,
) -> None:
    with pytest.raises(InvalidThreadId):
        await client.save_state("", sample_state())
    assert (client.handoff.handed_off, client.handoff.pending) == (0, {})


async def test_a_wait_for_what_never_arrives_times_out(client: AsyncCeleryCheckpointer) -> None:
    with pytest.raises(FlushTimeout) as info:
        await AsyncHandOff(client, "ghost", 5).wait(timeout=0.05)
    assert info.value.pending == [("ghost", 5)]


async def test_the_store_must_share_the_namespace(
    server: fakeredis.FakeServer, settings: Settings
) -> None:
    async with make_client(server, settings, "durable") as made:
        other = AsyncRedisCheckpointer(made.store.client, namespace="elsewhere")
        with pytest.raises(ValueError, match="namespace"):
            AsyncCeleryCheckpointer(made.handoff, other)
        await made.store.aclose()


# -- never on the loop ----------------------------------------------------------------------------
async def test_a_durable_publish_runs_off_the_loop(
    server: fakeredis.FakeServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(server, settings, "durable") as made:
        release = threading.Event()
        publish = made.handoff._send_one

        def slow_publish(*args: Any) -> None:
            release.wait(30)  # a broker that takes its time to confirm
            publish(*args)

        monkeypatch.setattr(made.handoff, "_send_one", slow_publish)
        ticker = Ticker()
        saving = asyncio.create_task(made.save_state("t", sample_state("s"), version=1))
        await ticker.advanced(20)  # the loop runs on while the publish waits
        assert not saving.done()
        release.set()
        await (await saving).wait(timeout=10)
        ticker.stop()
        assert await made.load_state("t") == sample_state("s")
        await made.store.aclose()


async def test_a_full_buffer_is_waited_for_off_the_loop(
    server: fakeredis.FakeServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = make_client(server, settings, "buffered", buffer_max_snapshots=1)
    release = threading.Event()
    publisher = made.handoff._publisher
    assert publisher is not None
    publish = publisher._publish

    def slow_publish(batch: Any) -> None:
        release.wait(30)
        publish(batch)

    monkeypatch.setattr(publisher, "_publish", slow_publish)
    ticker = Ticker()
    await made.save_state("a", sample_state("a"), version=1)  # taken by the publisher
    await made.save_state("b", sample_state("b"), version=1)  # fills the buffer
    third = asyncio.create_task(made.save_state("c", sample_state("c"), version=1))
    await ticker.advanced(20)
    assert not third.done()  # waiting for room, on a thread: the loop ticks on
    release.set()
    await third
    await made.flush(timeout=10)
    ticker.stop()
    assert sorted(await made.list_threads()) == ["a", "b", "c"]
    await made.aclose()
    await made.store.aclose()


async def test_a_buffered_hand_off_needs_no_thread(
    server: fakeredis.FakeServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = make_client(server, settings, "buffered")

    def no_thread(*args: Any) -> None:
        raise AssertionError("a buffered hand-off with room went to a thread")

    monkeypatch.setattr(made, "_in_thread", no_thread)
    handle = await made.save_state("t", sample_state(), version=1)
    monkeypatch.undo()
    await made.flush(timeout=10)
    await handle.wait(timeout=1)
    await made.aclose()
    await made.store.aclose()


async def test_closed_means_closed(server: fakeredis.FakeServer, settings: Settings) -> None:
    async with make_client(server, settings, "buffered") as made:
        await made.save_state("t", sample_state("before"), version=1)
    # aclose published what was buffered
    assert await made.store.load_state("t") == sample_state("before")
    with pytest.raises(HandOffError, match="closed"):
        await made.save_state("t", sample_state("after"), version=2)
    await made.store.aclose()
