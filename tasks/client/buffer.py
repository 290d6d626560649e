"""The buffered hand-off: a bounded buffer drained by a background thread into batch messages.

``submit`` returns before any network round trip. A newer snapshot of a thread replaces an
older one still waiting (coalescing, counted as superseded). The thread publishes up to
``max_batch`` snapshots or ``max_bytes`` of JSON per message, waiting at most ``linger``
seconds to fill one; it is woken for the first snapshot and for the one that fills a batch,
not for each (an event loop handing off would otherwise give it the GIL once per save). A
failed publish puts the batch back (unless newer versions arrived) and is retried with
backoff; the failure is reported to the caller on the next ``submit``
(which then takes nothing) or ``flush`` (``tests/unit/test_handoff_claims.py``).

What it can lose: the snapshots the broker has not accepted when the agent process itself
dies (SIGKILL, OOM, power loss) — those in the buffer, at most ``capacity``, and the batch
being published, taken from it, so at most ``capacity`` again. The client flushes the buffer
at a normal exit (``tests/integration/test_agent_crash.py``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from agents_persistence.checkpoint import PreparedSave
from agents_persistence.errors import FlushTimeout, HandOffError

__all__ = ["BufferedPublisher"]

logger = logging.getLogger(__name__)


class BufferedPublisher:
    """Coalescing, bounded, batching publisher thread (see the module docstring).

    ``publish`` is called on the thread with each batch; ``thread_context`` is entered by
    the thread around its whole run (the client holds one broker producer with it).
    """

    def __init__(
        self,
        publish: Callable[[list[PreparedSave]], None],
        *,
        max_batch: int,
        max_bytes: int,
        linger: float,
        capacity: int,
        full_policy: Literal["block", "raise"],
        name: str = "agents-persistence-publisher",
        thread_context: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self._publish = publish
        self._thread_context = thread_context
        self.max_batch, self.max_bytes, self.linger = max_batch, max_bytes, linger
        self.capacity, self.full_policy = capacity, full_policy
        self._buf: dict[str, PreparedSave] = {}
        self._bytes = 0  # JSON bytes in _buf
        self._cond = threading.Condition()
        self._inflight = 0
        self._flushing = 0
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self.superseded = 0
        self.published_messages = 0
        self.published_snapshots = 0

    # -- producer side ----------------------------------------------------------------------
    def submit(self, save: PreparedSave, timeout: float | None = None) -> None:
        """Queue ``save``; block (or raise HandOffError) while the buffer is full."""
        self._put(save, timeout, wait=True)

    def offer(self, save: PreparedSave) -> bool:
        """Queue ``save`` unless that means waiting for room: False (nothing queued) when
        the buffer is full and the policy is to block; otherwise as :meth:`submit`."""
        return self._put(save, None, wait=False)

    def _put(self, save: PreparedSave, timeout: float | None, *, wait: bool) -> bool:
        with self._cond:
            self._raise_pending_error()
            if self._closed:
                raise HandOffError("the publisher is closed")
            if not self._started:
                self._thread.start()
                self._started = True
            if save.thread_id not in self._buf and len(self._buf) >= self.capacity:
                if self.full_policy == "raise":
                    raise HandOffError(f"hand-off buffer is full ({self.capacity} snapshots)")
                if not wait:
                    return False
                if not self._cond.wait_for(
                    lambda: len(self._buf) < self.capacity or save.thread_id in self._buf,
                    timeout,
                ):
                    raise HandOffError(f"hand-off buffer stayed full for {timeout}s")
            self._store(save)
            return True

    def _store(self, save: PreparedSave) -> None:
        """Put ``save`` in the buffer unless it holds a newer version of the thread."""
        old = self._buf.get(save.thread_id)
        if old is not None:
            self.superseded += 1
            if save.version <= old.version:
                return
            self._bytes -= len(old.body)
        self._buf[save.thread_id] = save
        self._bytes += len(save.body)
        # Wake the thread only for an entry it waits for: the first (it sleeps on an empty
        # buffer) or the one that fills a batch (it lingers for one). Nobody else waits for
        # entries to arrive, and waking it for every one would have it take the GIL (from
        # an event loop, say) once per hand-off instead of once per batch.
        if len(self._buf) == 1 or self._batch_full():
            self._cond.notify_all()

    def _batch_full(self) -> bool:
        return len(self._buf) >= self.max_batch or self._bytes >= self.max_bytes

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued snapshot was accepted by the broker."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(
                    lambda: (not self._buf and self._inflight == 0) or self._error is not None,
                    timeout,
                )
                self._raise_pending_error()
                if not done:
                    pending = [(s.thread_id, s.version) for s in self._buf.values()]
                    raise FlushTimeout(pending, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the thread."""
        try:
            if self._started:
                self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._started:
                self._thread.join(timeout)

    @property
    def buffered(self) -> int:
        """Snapshots waiting to be published."""
        return len(self._buf)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of JSON waiting to be published."""
        return self._bytes

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise HandOffError(f"publishing buffered snapshots failed: {err}") from err

    # -- the thread -------------------------------------------------------------------------------
    def _take_batch(self) -> list[PreparedSave]:
        batch: list[PreparedSave] = []
        size = 0
        for save in itertools.islice(self._buf.values(), self.max_batch):
            if batch and size + len(save.body) > self.max_bytes:
                break
            batch.append(save)
            size += len(save.body)
        for save in batch:
            del self._buf[save.thread_id]
        self._bytes -= size
        return batch

    def _run(self) -> None:
        with self._thread_context():
            self._publish_until_closed()

    def _publish_until_closed(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._buf) or self._closed)
                if not self._buf and self._closed:
                    return
                deadline = time.monotonic() + self.linger
                while not self._batch_full() and not self._flushing and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._cond.wait(remaining):
                        break
                batch = self._take_batch()
                self._inflight += len(batch)
                self._cond.notify_all()
            try:
                self._publish(batch)
            except Exception as exc:
                logger.warning("publishing %d snapshots failed (%s); retrying", len(batch), exc)
                with self._cond:
                    self._requeue(batch)
                    self._error = exc
                    self._inflight -= len(batch)
                    self._cond.notify_all()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with self._cond:
                self._inflight -= len(batch)
                self.published_messages += 1
                self.published_snapshots += len(batch)
                self._cond.notify_all()

    def _requeue(self, batch: list[PreparedSave]) -> None:
        for save in batch:
            queued = self._buf.get(save.thread_id)
            if queued is None or queued.version < save.version:
                self._buf[save.thread_id] = save
                self._bytes += len(save.body) - (0 if queued is None else len(queued.body))
