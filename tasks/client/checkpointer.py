"""``CeleryCheckpointer``: the agent side. Saves are handed to Celery; reads go to the core.

Hand-off modes (``Settings.handoff_mode`` or ``mode=``):

``durable`` (default)
    ``save_state`` returns once the broker accepted the message carrying the snapshot (Redis:
    the LPUSH answered; RabbitMQ: the publisher confirm arrived). If the agent process dies
    right after, the snapshot is safe in the broker (``tests/integration/test_agent_crash.py``).
    Concurrent saves share messages (group commit,
    :mod:`~agents_persistence.tasks.client.group_commit`): a save that finds no publish in
    flight is published at once, alone; saves arriving meanwhile go together in the next
    message, a batch, and each returns once that message was accepted — or raises
    :class:`HandOffError` if it was not.
``buffered``
    ``save_state`` returns before any network round trip; a background thread publishes
    batches. If the agent process dies, the snapshots the broker has not accepted yet are
    lost: those in the buffer (at most ``buffer_max_snapshots``) and the batch being
    published (taken from it, so at most as many again). A normal exit (an ``atexit``
    hook), ``flush()`` and ``close()`` publish them (``tests/integration/test_agent_crash.py``).

In both modes, ``handle.wait()`` / ``flush()`` block until saves are durable in the store
(or superseded by a newer version or a delete).

The client keeps the newest snapshot of each thread it handed off until it has seen it
durable (its outbox). A broker can lose a message it already accepted — kombu's Redis
transport loses one in flight when a worker is SIGKILLed between taking it off the queue
and recording it as unacknowledged — and such a message never comes back by itself; so
``wait``/``flush`` re-send a hand-off still not durable after ``resend_pending_after_seconds``.
Re-sent saves carry the same version, so a duplicate is a no-op
(``tests/integration/test_resend.py``). The outbox is pruned (one pipelined read) whenever it
has doubled since the last look, on a housekeeping thread of its own: the hand-off path never
touches the store, so a store outage never slows or fails a hand-off the broker took
(``tests/unit/test_outbox_housekeeping.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from agents_persistence.base import BaseCheckpointer
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteResult
from agents_persistence.config.settings import Settings
from agents_persistence.errors import HandOffError
from agents_persistence.metrics import metrics
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks import tracing
from agents_persistence.tasks.client.buffer import BufferedPublisher
from agents_persistence.tasks.client.durability import DurabilityWait, Receipt
from agents_persistence.tasks.client.group_commit import GroupCommit
from agents_persistence.tasks.client.housekeeper import Housekeeper
from agents_persistence.tasks.client.sender import TaskSender
from agents_persistence.tasks.protocol.messages import batch_message, save_message
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from kombu.exceptions import OperationalError
from kombu.serialization import dumps, loads

__all__ = ["CeleryCheckpointer", "HandOff"]

logger = logging.getLogger(__name__)

_BROKER_ERRORS = (OperationalError, ConnectionError, OSError, TimeoutError)
#: Smallest outbox worth a pruning read; after each, the next waits until it doubled.
_PRUNE_MIN = 1024


class _Outgoing:
    """The newest hand-off of a thread not yet seen durable, and when it was (re)sent."""

    __slots__ = ("save", "sent_at")

    def __init__(self, save: PreparedSave, sent_at: float) -> None:
        self.save = save
        self.sent_at = sent_at


class HandOff(Receipt["CeleryCheckpointer"]):
    """What ``save_state`` returns: the thread, the version, and a way to wait for it."""

    __slots__ = ()

    def wait(self, timeout: float | None = 30.0) -> None:
        """Block until this save (or something newer for the thread) is in the store.

        Raises:
            FlushTimeout: not durable within ``timeout`` seconds.
        """
        self._client._wait_durable({self.thread_id: self.version}, timeout)


class CeleryCheckpointer:
    """Hands snapshots to Celery workers; loads, listings and deletes go straight to the core.

    Args:
        store: the checkpointer the workers write through (the same namespace); reads use it.
        app: the Celery app; default: ``create_app(settings, store=store)``.
        settings: default: the app's settings, else :class:`Settings` from the environment.
        mode: ``"durable"`` or ``"buffered"``; default: ``settings.handoff_mode``.

    Counters (this client's life so far): ``handed_off`` (``save_state`` calls that
    returned), ``superseded`` (replaced in the buffer before publishing),
    ``published_snapshots`` and ``published_messages`` (what the broker accepted, re-sends
    included), ``resent``, ``written_through``.
    """

    def __init__(
        self,
        store: BaseCheckpointer,
        app: PersistenceApp | None = None,
        *,
        settings: Settings | None = None,
        mode: Literal["durable", "buffered"] | None = None,
    ) -> None:
        if settings is None:
            settings = app.settings if app is not None else Settings()
        self.settings = settings
        self.store = store
        self.app = app if app is not None else create_app(settings, store=store)
        self.namespace = store.namespace
        self.mode = mode if mode is not None else settings.handoff_mode
        self._eager = bool(self.app.conf.task_always_eager)
        self._outbox: dict[str, _Outgoing] = {}
        self._prune_at = _PRUNE_MIN
        self._lock = threading.Lock()
        self._pruner = Housekeeper(self._prune, name="agents-persistence-outbox")
        self.resent = 0
        self._retry_policy = {
            "max_retries": settings.publish_max_retries,
            "interval_start": 0.05,
            "interval_step": 0.2,
            "interval_max": 1.0,
        }
        self._sender = TaskSender(
            self.app, settings.queue, self._retry_policy, settings.publish_timeout_seconds
        )
        self.handed_off = 0
        self.published_snapshots = 0
        self.published_messages = 0
        self.written_through = 0
        self._publisher: BufferedPublisher | None = None
        self._group: GroupCommit | None = None
        if self.mode == "durable":
            self._group = GroupCommit(
                self._publish_group,
                max_batch=settings.batch_max_snapshots,
                max_bytes=settings.batch_max_bytes,
                recover=self._group_failed,
            )
        else:
            self._publisher = BufferedPublisher(
                self._publish_buffered,
                max_batch=settings.batch_max_snapshots,
                max_bytes=settings.batch_max_bytes,
                linger=settings.batch_linger_seconds,
                capacity=settings.buffer_max_snapshots,
                full_policy=settings.buffer_full_policy,
                thread_context=self._sender.holding_producer,
            )
            atexit.register(_close_at_exit, weakref.ref(self))

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        mode: Literal["durable", "buffered"] | None = None,
    ) -> CeleryCheckpointer:
        """A client, its store and its app, all from ``settings`` (None: the environment)."""
        settings = settings if settings is not None else Settings()
        store = RedisCheckpointer.from_settings(settings)
        return cls(store, create_app(settings, store=store), settings=settings, mode=mode)

    @property
    def handoff_timeout(self) -> float:
        """The longest ``save_state`` waits on a broker that refuses or hangs before it
        raises :class:`HandOffError` (durable mode).

        Each attempt (the first, each of ``publish_max_retries``, and one reconnect) waits
        at most ``publish_timeout_seconds`` to connect and as long again for the broker's
        answer (RabbitMQ: the publisher confirm); the retry intervals come on top.
        """
        policy = self._retry_policy
        attempts = self.settings.publish_max_retries + 2
        intervals = sum(
            min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
            for i in range(self.settings.publish_max_retries)
        )
        return attempts * 2 * self.settings.publish_timeout_seconds + intervals

    def __enter__(self) -> CeleryCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CeleryCheckpointer(namespace={self.namespace!r}, mode={self.mode!r})"

    # -- saves ------------------------------------------------------------------------------------
    def save_state(
        self, thread_id: str, state: AgentStateSnapshot, *, version: int | None = None
    ) -> HandOff:
        """Validate, version and hand off ``state``; does not wait for storage.

        Raises:
            InvalidThreadId, InvalidVersion, InvalidSnapshot, SnapshotTooLarge: before
                anything is enqueued.
            HandOffError: the broker did not accept it within the publish retry bound
                (unless ``write_through_on_broker_error``, which writes it synchronously).
        """
        if tracing.enabled():
            with tracing.span(
                "agents_persistence.save_state", thread_id=thread_id, mode=self.mode
            ):
                save = self.store.prepare(thread_id, state, version=version)
                self.hand_off(save)
        else:
            save = self.store.prepare(thread_id, state, version=version)
            self.hand_off(save)
        return HandOff(self, save.thread_id, save.version)

    def hand_off(self, save: PreparedSave) -> None:
        """Hand off a prepared save (:meth:`save_state` after ``store.prepare``): publish it
        (durable mode) or buffer it (buffered mode), and keep it until seen durable.

        Raises:
            HandOffError: as :meth:`save_state`.
        """
        if self._publisher is not None:
            self._publisher.submit(save)
        elif self._group is not None:
            self._group.commit(save)
        else:
            self._publish_one(save)
        self._track(save)

    async def hand_off_from_loop(
        self, save: PreparedSave, spawn: Callable[[Callable[[], None]], object]
    ) -> None:
        """:meth:`hand_off` for a coroutine in durable mode: joins the group commit without
        blocking the event loop; a group it leads is published by ``spawn(fn)``, which runs
        ``fn`` on another thread (``executor.submit``, say). In buffered mode: ``hand_off``
        on the loop's default executor.

        Raises:
            HandOffError: as :meth:`save_state`.
        """
        if self._group is None:
            await asyncio.get_running_loop().run_in_executor(None, self.hand_off, save)
            return
        await self._group.join(save, spawn)
        self._track(save)

    def try_hand_off(self, save: PreparedSave) -> bool:
        """Hand off ``save`` if that needs no network round trip and no wait: buffered mode
        with room in the buffer. False (nothing done) otherwise; then call :meth:`hand_off`.

        Raises:
            HandOffError: the buffer refuses it (full under the ``raise`` policy, closed, or
                a publish failed since the last hand-off).
        """
        if self._publisher is None or not self._publisher.offer(save):
            return False
        self._track(save)
        return True

    def _track(self, save: PreparedSave) -> None:
        with self._lock:
            self.handed_off += 1
            held = self._outbox.get(save.thread_id)
            if held is None or held.save.version < save.version:
                self._outbox[save.thread_id] = _Outgoing(save, time.monotonic())
            grown = len(self._outbox) >= self._prune_at
        metrics().handed_off(self.mode)
        if grown:
            self._pruner.wake()

    def _publish_one(self, save: PreparedSave) -> None:
        try:
            self._send_one(save)
        except _BROKER_ERRORS as exc:
            self._broker_down([save], exc)

    def _publish_batch(self, saves: list[PreparedSave]) -> None:
        try:
            self._send_batch(saves)
        except _BROKER_ERRORS as exc:
            self._broker_down(saves, exc)

    def _publish_group(self, saves: list[PreparedSave]) -> None:
        """A group commit's message: a save message for one snapshot, a batch for more
        (broker errors raised as they are: :meth:`_group_failed` handles them)."""
        if len(saves) == 1:
            self._send_one(saves[0])
        else:
            self._send_batch(saves)

    def _group_failed(self, saves: list[PreparedSave], exc: BaseException) -> None:
        """A group's publish failed: ``saves`` are its snapshots and those queued behind it.
        The broker's errors go as when a single save fails (HandOffError, or written
        through); anything else is raised as it is."""
        if not isinstance(exc, _BROKER_ERRORS):
            raise exc
        self._broker_down(saves, exc)

    def _send_one(self, save: PreparedSave) -> None:
        kwargs = save_message(self.namespace, save)
        if self._eager:
            self._run_eager(SAVE_TASK, kwargs)
        else:
            kwargsrepr = (
                f"{{'namespace': {self.namespace!r}, 'thread_id': {save.thread_id!r}, "
                f"'version': {save.version}, 'state': <{len(save.body)} bytes of JSON>, "
                f"'saved_at_ms': {save.saved_at_ms}}}"
            )
            self._sender.send(SAVE_TASK, kwargs, kwargsrepr[:1024])
        self._count_published(1)

    def _send_batch(self, saves: list[PreparedSave]) -> None:
        kwargs = batch_message(self.namespace, saves)
        if self._eager:
            self._run_eager(SAVE_BATCH_TASK, kwargs)
        else:
            size = sum(len(s.body) for s in saves)
            kwargsrepr = (
                f"{{'namespace': {self.namespace!r}, "
                f"'entries': <{len(saves)} snapshots, {size} bytes of JSON>}}"
            )
            self._sender.send(SAVE_BATCH_TASK, kwargs, kwargsrepr)
        self._count_published(len(saves))

    def _count_published(self, snapshots: int) -> None:
        with self._lock:
            self.published_snapshots += snapshots
            self.published_messages += 1

    def _publish_buffered(self, saves: list[PreparedSave]) -> None:
        self._publish_batch(saves)

    def _run_eager(self, name: str, kwargs: Mapping[str, Any]) -> None:
        # The same JSON round trip a real broker would impose, then the task inline.
        content_type, encoding, data = dumps(dict(kwargs), serializer="json")
        wire = loads(data, content_type, encoding, accept={"application/json"})
        self.app.tasks[name].apply(kwargs=wire, throw=True)

    def _broker_down(self, saves: list[PreparedSave], exc: BaseException) -> None:
        if not self.settings.write_through_on_broker_error:
            raise HandOffError(
                f"broker did not accept {len(saves)} snapshot(s) after "
                f"{self.settings.publish_max_retries} retries: {type(exc).__name__}: {exc}"
            ) from exc
        logger.warning("broker unavailable (%s); writing %d snapshot(s) through", exc, len(saves))
        for result in self.store.save_many(saves):
            if isinstance(result, Exception):
                raise HandOffError(f"write-through failed: {result}") from result
        with self._lock:
            self.written_through += len(saves)
        metrics().handed_off("write_through", len(saves))

    # -- durability -------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every save this client handed off is durable or superseded.

        Raises:
            FlushTimeout: naming the saves still pending after ``timeout`` seconds.
            HandOffError: the buffered publisher could not reach the broker.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.publish_buffered(timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._wait_durable(self.pending, remaining)

    def publish_buffered(self, timeout: float | None = 30.0) -> None:
        """Block until the broker accepted every buffered snapshot (buffered mode; at once
        otherwise).

        Raises:
            FlushTimeout: the buffer was not published within ``timeout`` seconds.
            HandOffError: the buffered publisher could not reach the broker.
        """
        if self._publisher is not None:
            self._publisher.flush(timeout)

    @property
    def pending(self) -> dict[str, int]:
        """Threads with hand-offs not yet seen durable, and the newest version handed off."""
        with self._lock:
            return {tid: out.save.version for tid, out in self._outbox.items()}

    def settle(self, held: Mapping[str, int]) -> None:
        """Drop outbox entries the store holds (``held``: thread id -> version held) or has
        superseded."""
        with self._lock:
            for tid, version in held.items():
                out = self._outbox.get(tid)
                if out is not None and out.save.version <= version:
                    del self._outbox[tid]

    def _prune(self) -> None:
        """Drop what the store holds from the outbox (on the housekeeping thread only).

        Raises whatever the store raises; the caller backs off and tries again later.
        """
        with self._lock:
            threads = list(self._outbox)
        for start in range(0, len(threads), 1000):
            self.settle(self.store.stored_versions(threads[start : start + 1000]))
        with self._lock:
            self._prune_at = max(_PRUNE_MIN, 2 * len(self._outbox))

    def take_overdue(self, waiting: Mapping[str, int]) -> list[PreparedSave]:
        """The waited-for hand-offs not durable after the resend delay, marked as re-sent
        now (publish them with :meth:`resend`)."""
        now = time.monotonic()
        cutoff = now - self.settings.resend_pending_after_seconds
        with self._lock:
            overdue = []
            for tid, version in waiting.items():
                out = self._outbox.get(tid)
                if out is not None and out.save.version == version and out.sent_at <= cutoff:
                    out.sent_at = now
                    overdue.append(out.save)
        return overdue

    def resend(self, overdue: Sequence[PreparedSave]) -> None:
        """Publish ``overdue`` hand-offs again, in batch messages (same versions: a copy
        that did arrive makes the re-sent one a duplicate)."""
        if not overdue:
            return
        logger.warning(
            "re-sending %d hand-off(s) not durable after %.1fs",
            len(overdue),
            self.settings.resend_pending_after_seconds,
        )
        for start in range(0, len(overdue), self.settings.batch_max_snapshots):
            self._publish_batch(list(overdue[start : start + self.settings.batch_max_snapshots]))
        with self._lock:
            self.resent += len(overdue)

    def _wait_durable(self, wanted: Mapping[str, int], timeout: float | None) -> None:
        wait = DurabilityWait(self, wanted, timeout)
        while not wait.observe(self.store.stored_versions(wait.threads)):
            self.resend(wait.overdue())
            time.sleep(wait.next_delay())

    def close(self, timeout: float | None = 30.0) -> None:
        """Publish what is buffered (buffered mode) and stop the background threads."""
        try:
            if self._publisher is not None:
                self._publisher.close(timeout)
        finally:
            self._pruner.stop()

    @property
    def superseded(self) -> int:
        """Snapshots replaced in the buffer by a newer one of the same thread."""
        return 0 if self._publisher is None else self._publisher.superseded

    # -- straight through the core ----------------------------------------------------------------
    def load_state(self, thread_id: str) -> AgentStateSnapshot | None:
        """The newest durable state (hand-offs still queued are not visible; see flush)."""
        return self.store.load_state(thread_id)

    def load_checkpoint(self, thread_id: str) -> Checkpoint | None:
        """The newest durable state with version and save time."""
        return self.store.load_checkpoint(thread_id)

    def list_threads(self) -> list[str]:
        """Every thread with live durable state."""
        return self.store.list_threads()

    def iter_threads(self, page_size: int = 500) -> Iterator[str]:
        """Live threads a page at a time."""
        return self.store.iter_threads(page_size)

    def delete_thread(self, thread_id: str, *, version: int | None = None) -> WriteResult:
        """Delete synchronously. The tombstone's version is newer than every save this
        process handed off, so saves of the thread still queued cannot bring it back."""
        result = self.store.delete_thread(thread_id, version=version)
        self.settle({thread_id: result.current_version})
        return result


def _close_at_exit(ref: weakref.ReferenceType[CeleryCheckpointer]) -> None:
    client = ref()
    if client is not None:
        try:
            client.close(timeout=10.0)
        except Exception:
            logger.exception("could not publish buffered snapshots at exit")
