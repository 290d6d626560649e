"""``AsyncCeleryCheckpointer``: the agent side on asyncio. Saves are handed to Celery
without blocking the event loop; reads, deletes and durability waits await the store.

It composes a blocking :class:`~agents_persistence.tasks.client.checkpointer.CeleryCheckpointer`
(its outbox, housekeeping thread, buffer and sender: the same hand-off, the same modes, the
same re-sends) with an :class:`~agents_persistence.AsyncRedisCheckpointer` on the same
namespace:

``buffered``
    ``await save_state`` validates and encodes the snapshot on the loop and puts it in the
    buffer, which the publisher thread drains: no network round trip, no thread hop. Only
    when the buffer is full (``buffer_full_policy="block"``) does the wait for room move to
    a worker thread.
``durable``
    the coroutine joins the blocking client's group commit and awaits the broker's
    acceptance of the message carrying its snapshot: a group is published on a small
    executor of its own (``publish_threads``, one group at a time, the rest for re-sends),
    and coroutines arriving meanwhile go together in the next message. The loop only
    queues and is woken once per group.

``await handle.wait()`` and ``await flush()`` poll the store through the async store, and
re-send hand-offs not durable after ``resend_pending_after_seconds`` (on the executor).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, ParamSpec, Self, TypeVar

from agents_persistence.async_store import AsyncRedisCheckpointer
from agents_persistence.checkpoint import Checkpoint, WriteResult
from agents_persistence.config.settings import Settings
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.client.durability import DurabilityWait, Receipt
from agents_persistence.tasks.worker.app import PersistenceApp, create_app

__all__ = ["AsyncCeleryCheckpointer", "AsyncHandOff"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncHandOff(Receipt["AsyncCeleryCheckpointer"]):
    """What ``await save_state`` returns: the thread, the version, and a way to wait for it."""

    __slots__ = ()

    async def wait(self, timeout: float | None = 30.0) -> None:
        """Return once this save (or something newer for the thread) is in the store.

        Raises:
            FlushTimeout: not durable within ``timeout`` seconds.
        """
        await self._client._wait_durable({self.thread_id: self.version}, timeout)


class AsyncCeleryCheckpointer:
    """Hands snapshots to Celery workers from coroutines; reads go to the async store.

    Args:
        handoff: the blocking client doing the hand-off (its mode, app, settings).
        store: an async store on ``handoff``'s namespace, for reads, deletes and waits.
        publish_threads: threads publishing durable hand-offs (and re-sends) at once.

    Use ``async with`` or :meth:`aclose`; the counters are ``handoff``'s.
    """

    def __init__(
        self,
        handoff: CeleryCheckpointer,
        store: AsyncRedisCheckpointer,
        *,
        publish_threads: int = 8,
    ) -> None:
        if store.namespace != handoff.namespace:
            raise ValueError(
                f"the store's namespace {store.namespace!r} is not the hand-off's "
                f"{handoff.namespace!r}"
            )
        self.handoff = handoff
        self.store = store
        self.namespace = handoff.namespace
        self.mode = handoff.mode
        self._executor = ThreadPoolExecutor(
            max_workers=publish_threads, thread_name_prefix="agents-persistence-publish"
        )
        self._owned: tuple[RedisCheckpointer, PersistenceApp] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        mode: Literal["durable", "buffered"] | None = None,
    ) -> AsyncCeleryCheckpointer:
        """A client, its stores and its app, all from ``settings`` (None: the environment);
        :meth:`aclose` closes them all."""
        settings = settings if settings is not None else Settings()
        blocking = RedisCheckpointer.from_settings(settings)
        app = create_app(settings, store=blocking)
        client = cls(
            CeleryCheckpointer(blocking, app, settings=settings, mode=mode),
            AsyncRedisCheckpointer.from_settings(settings),
        )
        client._owned = (blocking, app)
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncCeleryCheckpointer(namespace={self.namespace!r}, mode={self.mode!r})"

    # -- saves ------------------------------------------------------------------------------------
    async def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> AsyncHandOff:
        """Validate, version and hand off ``state``; does not wait for storage.

        Raises:
            InvalidThreadId, InvalidVersion, InvalidSnapshot, SnapshotTooLarge: before
                anything is enqueued.
            HandOffError: as :meth:`CeleryCheckpointer.save_state`.
        """
        save = self.handoff.store.prepare(thread_id, state, version=version)
        if self.mode == "durable":
            await self.handoff.hand_off_from_loop(save, self._executor.submit)
        elif not self.handoff.try_hand_off(save):
            await self._in_thread(self.handoff.hand_off, save)
        return AsyncHandOff(self, save.thread_id, save.version)

    async def flush(self, timeout: float | None = 30.0) -> None:
        """Return once every save this client handed off is durable or superseded.

        Raises:
            FlushTimeout: naming the saves still pending after ``timeout`` seconds.
            HandOffError: the buffered publisher could not reach the broker.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.mode == "buffered":
            await self._in_thread(self.handoff.publish_buffered, timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        await self._wait_durable(self.handoff.pending, remaining)

    async def _wait_durable(self, wanted: Mapping[str, int], timeout: float | None) -> None:
        wait = DurabilityWait(self.handoff, wanted, timeout)
        while not wait.observe(await self.store.stored_versions(wait.threads)):
            overdue = wait.overdue()
            if overdue:
                await self._in_thread(self.handoff.resend, overdue)
            await asyncio.sleep(wait.next_delay())

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Publish what is buffered, stop the background threads; close the stores too if
        :meth:`from_settings` made them."""
        try:
            await self._in_thread(self.handoff.close, timeout)
        finally:
            self._executor.shutdown(wait=False)
            if self._owned is not None:
                blocking, app = self._owned
                await self.store.aclose()
                blocking.close()
                app.close()

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the executor, awaited (blocking I/O off the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # -- straight through the core ----------------------------------------------------------------
    async def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        """The newest durable state (hand-offs still queued are not visible; see flush)."""
        return await self.store.load_state(thread_id)

    async def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        """The newest durable state with version and save time."""
        return await self.store.load_checkpoint(thread_id)

    async def list_threads(self) -> list[str]:
        """Every thread with live durable state."""
        return await self.store.list_threads()

    def iter_threads(self, page_size: int = 500) -> AsyncIterator[str]:
        """Live threads a page at a time (an async iterator)."""
        return self.store.iter_threads(page_size)

    async def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        """Delete now (not handed off). The tombstone's version is newer than every save this
        process handed off, so saves of the thread still queued cannot bring it back."""
        result = await self.store.delete_thread(thread_id, version=version)
        self.handoff.settle({thread_id: result.current_version})
        return result
