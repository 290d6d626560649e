"""The async store behind the blocking contract, so one conformance suite runs on both.

:class:`LoopThread` runs an event loop on a thread of its own; :class:`BlockingFacade` turns
each call of the contract into a coroutine of :class:`AsyncRedisCheckpointer` run on that
loop and waits for its result. Every call reaches the async store (none is answered by the
facade itself), so the suite tests the async store's own validation, errors and results.
The tools' methods (dead letters, key counts, purge, drop, INFO) belong to the blocking
store only: the tests that need them are skipped here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import pytest
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    BaseCheckpointer,
    Checkpoint,
    PreparedSave,
    WriteResult,
)
from agents_persistence.lists import BoundedList

__all__ = ["BlockingFacade", "LoopThread"]

T = TypeVar("T")

#: The longest one call may take before the test fails (a hung loop, not a slow store).
_CALL_TIMEOUT = 60.0


class LoopThread:
    """An event loop running on a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="async-store-loop")
        self._thread.daemon = True
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop; its result, or its exception raised here."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def stop(self) -> None:
        """Stop the loop, wait for its thread, and close it."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CALL_TIMEOUT)
        self.loop.close()


def _tools_only() -> NoReturn:
    pytest.skip("the tools' methods belong to the blocking store")


class BlockingFacade(BaseCheckpointer):
    """:class:`BaseCheckpointer`'s methods, each one an awaited call of ``store``."""

    def __init__(self, store: AsyncRedisCheckpointer, loop: LoopThread) -> None:
        # No BaseCheckpointer.__init__: every attribute below comes from the async store.
        self.store, self._loop = store, loop

    @property
    def namespace(self) -> str:
        return self.store.namespace

    @property
    def ttl(self) -> timedelta | None:
        return self.store.ttl

    def close(self) -> None:
        """Close the async store's connections (on its loop)."""
        self._loop.run(self.store.aclose())

    # -- the contract -----------------------------------------------------------------------------
    def prepare(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> PreparedSave:
        return self.store.prepare(thread_id, state, version=version)

    def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> WriteResult:
        return self._loop.run(self.store.save_state(thread_id, state, version=version))

    def save_prepared(self, save: PreparedSave) -> WriteResult:
        return self._loop.run(self.store.save_prepared(save))

    def save_many(self, saves: Sequence[PreparedSave]) -> list[WriteResult | Exception]:
        return self._loop.run(self.store.save_many(saves))

    def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        return self._loop.run(self.store.load_state(thread_id))

    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        return self._loop.run(self.store.load_checkpoint(thread_id))

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        return self._loop.run(self.store.delete_thread(thread_id, version=version))

    def list_threads(self) -> list[str]:
        return self._loop.run(self.store.list_threads())

    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        pages = self.store.iter_threads(page_size)
        try:
            while True:
                try:
                    yield self._loop.run(_next(pages))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(pages.aclose())  # type: ignore[attr-defined]

    def cleanup_expired(self, limit: int | None = None) -> int:
        return self._loop.run(self.store.cleanup_expired(limit))

    def stored_versions(self, thread_ids: Sequence[str]) -> dict[str, int]:
        return self._loop.run(self.store.stored_versions(thread_ids))

    def count_threads(self) -> tuple[int, int]:
        return self._loop.run(self.store.count_threads())

    def ping(self) -> None:
        self._loop.run(self.store.ping())

    # -- tools: the blocking store's --------------------------------------------------------
    def dead_letter_list(self, max_length: int, *, namespace: str | None = None) -> BoundedList:
        _tools_only()

    def key_count(self) -> int:
        _tools_only()

    def server_info(self) -> dict[str, object]:
        _tools_only()

    def purge_threads(self, thread_ids: Sequence[str]) -> int:
        _tools_only()

    def drop_namespace(self) -> int:
        _tools_only()


async def _next(pages: AsyncIterator[str]) -> str:
    return await anext(pages)
