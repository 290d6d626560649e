"""AsyncCeleryCheckpointer against a real ``celery -A agents_persistence.tasks worker``: 200
coroutines hand off at once, in each mode; after ``flush`` every thread loads its newest
version."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from agents_persistence.tasks import AsyncCeleryCheckpointer

from tests.integration.conftest import Stack, StackFactory
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.anyio]

AGENTS = 200
VERSIONS = 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def hand_off_and_flush(stack: Stack, mode: Literal["durable", "buffered"]) -> list[str]:
    """Each of ``AGENTS`` coroutines saves its thread ``VERSIONS`` times (waiting for the
    first save's handle); then one flush. Returns the thread ids."""
    async with AsyncCeleryCheckpointer.from_settings(stack.settings, mode=mode) as client:

        async def agent(tid: str) -> None:
            for version in range(1, VERSIONS + 1):
                handle = await client.save_state(
                    tid, sample_state(f"{tid}@{version}"), version=version
                )
                if version == 1:
                    await handle.wait(timeout=120)  # read-your-writes across the hand-off
                    assert (await client.load_state(tid)) == sample_state(f"{tid}@1")

        threads = [f"agent-{i:03d}" for i in range(AGENTS)]
        await asyncio.gather(*(agent(tid) for tid in threads))
        await client.flush(timeout=120)
        assert client.handoff.pending == {}
        assert client.handoff.handed_off == AGENTS * VERSIONS
    return threads


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["durable", "buffered"])
async def test_many_coroutines_hand_off_and_read_their_newest(
    stack_factory: StackFactory, mode: Literal["durable", "buffered"]
) -> None:
    stack = stack_factory()
    stack.worker()
    threads = await hand_off_and_flush(stack, mode)  # from_settings: closes what it made
    held = stack.store.stored_versions(threads)
    assert held == dict.fromkeys(threads, VERSIONS)
    for tid in threads:
        checkpoint = stack.store.load_checkpoint(tid)
        assert checkpoint is not None
        assert (checkpoint.version, checkpoint.state) == (VERSIONS, sample_state(f"{tid}@3"))
