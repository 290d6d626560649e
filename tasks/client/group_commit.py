"""Durable hand-offs in groups: callers that arrive while a publish is in flight share the next.

Durable mode returns from ``save_state`` only once the broker accepted the message carrying
the snapshot. One message per save makes every concurrent caller pay a broker round trip of
its own; group commit lets one message carry many callers' snapshots, and still answers each
caller only once the broker accepted the message that carries its own:

- A caller that finds no publish in flight publishes at once (its snapshot alone, as a save
  message): a lone agent waits for nothing more than its own round trip.
- A caller that arrives while a publish is in flight queues. When the publish ends, the
  oldest queued caller becomes the leader: it takes the queue, oldest first, up to
  ``max_batch`` snapshots and ``max_bytes`` of JSON (the first always goes), and publishes
  them as one batch message; the others wait for its outcome. Then the next queued caller
  leads, and so on; one publish is in flight at a time.
- Every snapshot is kept, in arrival order: two saves of one thread in a group are two
  entries, and the store keeps the newer version as it would from two messages.
- A publish that fails fails every caller in the group, and every caller queued behind it
  (they waited for that attempt and wait for no other: a caller waits at most for the
  publish in flight when it arrived, then its own group's). The leader gets the error,
  every other caller a :class:`~agents_persistence.errors.HandOffError` of its own chained
  to it. None of them is counted as handed off, and each still holds its state; a broker
  that took the message after all (a confirm that timed out) makes the retried saves
  duplicates, which the store ignores. A ``recover`` step (the client's write-through) may
  save them instead.

Coroutines join the same queue without blocking the event loop (:meth:`GroupCommit.join`):
a coroutine that would lead has its group published on a thread it is given, which goes on
publishing the next group while anyone is queued (no caller of its own waits on it), and
each event loop is told a group's outcome in one callback. A process forked while a publish is in
flight starts its child with an empty queue and nothing in flight
(``tests/unit/test_group_commit.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from agents_persistence.checkpoint import PreparedSave
from agents_persistence.errors import HandOffError

__all__ = ["GroupCommit"]

_QUEUED: Final = 0
_LEADING: Final = 1  # chosen to publish the next group
_TAKEN: Final = 2  # in a group being published
_DONE: Final = 3


class _Entry:
    """One caller's snapshot in the queue, and how to tell it the outcome."""

    __slots__ = ("error", "save", "state")

    def __init__(self, save: PreparedSave) -> None:
        self.save = save
        self.state = _QUEUED
        self.error: BaseException | None = None

    def lead(self) -> None:
        """Wake the caller to publish the next group (``state`` is already ``_LEADING``)."""
        raise NotImplementedError

    def settle(self, error: BaseException | None) -> None:
        """Tell the caller its group's outcome (the entry is already ``_DONE``)."""
        raise NotImplementedError


class _ThreadEntry(_Entry):
    """A blocking caller, parked on a lock of its own until it leads or is answered."""

    __slots__ = ("gate",)

    def __init__(self, save: PreparedSave) -> None:
        super().__init__(save)
        self.gate = threading.Lock()
        self.gate.acquire()

    def lead(self) -> None:
        self.gate.release()

    def settle(self, error: BaseException | None) -> None:
        self.error = error
        self.gate.release()


class _TaskEntry(_Entry):
    """A coroutine awaiting a future of its event loop; leading means publishing on a thread."""

    __slots__ = ("commit", "future", "loop", "spawn")

    def __init__(
        self,
        save: PreparedSave,
        commit: GroupCommit,
        spawn: Callable[[Callable[[], None]], object],
    ) -> None:
        super().__init__(save)
        self.commit = commit
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.spawn = spawn

    def lead(self) -> None:
        try:
            self.spawn(self._lead_in_thread)
        except RuntimeError:  # e.g. the executor was shut down: a thread of its own
            threading.Thread(target=self._lead_in_thread, daemon=True).start()

    def _lead_in_thread(self) -> None:
        # An executor's thread, no caller's: it publishes while anyone is queued.
        with contextlib.suppress(Exception):  # it reaches the coroutine through its future
            self.commit.lead_group(self, rounds=None)

    def settle(self, error: BaseException | None) -> None:  # pragma: no cover - see _answer
        raise AssertionError("coroutines are answered per event loop")


#: Every live queue, reset in a forked child.
_LIVE: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


class GroupCommit:
    """The durable hand-off queue of one client (see the module docstring).

    Args:
        publish: publishes a group's snapshots in one message, returning once the broker
            accepted it; raises if it did not.
        max_batch: most snapshots in one group.
        max_bytes: most bytes of JSON in one group (its first snapshot always goes).
        recover: called when a publish failed, with the snapshots of its group and of every
            caller queued behind it, and the error: returns if they are safe all the same
            (written through to the store, say), else raises what each of them gets.
            Default: the publish's error.
    """

    def __init__(
        self,
        publish: Callable[[list[PreparedSave]], None],
        *,
        max_batch: int,
        max_bytes: int,
        recover: Callable[[list[PreparedSave], BaseException], None] | None = None,
    ) -> None:
        self._publish = publish
        self._recover = recover if recover is not None else _reraise
        self.max_batch, self.max_bytes = max_batch, max_bytes
        self._lock = threading.Lock()
        self._queue: deque[_Entry] = deque()
        self._busy = False  # a group is being published (or its leader chosen)
        self.groups = 0  # publishes attempted
        self.grouped = 0  # snapshots they carried
        _LIVE.add(self)

    @property
    def queued(self) -> int:
        """Callers waiting for a publish (the one in flight carries none of them)."""
        with self._lock:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """A publish is in flight (or its leader is being woken)."""
        return self._busy

    def commit(self, save: PreparedSave) -> None:
        """Return once the broker accepted a message carrying ``save``.

        Raises:
            HandOffError: the message was not accepted (every caller in its group gets one).
        """
        entry = _ThreadEntry(save)
        if not self._enqueue(entry):
            try:
                entry.gate.acquire()
            except BaseException:
                self._abandon(entry)
                raise
            if entry.state == _DONE:
                if entry.error is not None:
                    raise _own_error(entry.error)
                return
        self.lead_group(entry)

    async def join(
        self, save: PreparedSave, spawn: Callable[[Callable[[], None]], object]
    ) -> None:
        """:meth:`commit` for a coroutine: awaits the outcome without blocking the event loop;
        a group this coroutine leads is published by ``spawn(fn)``, which runs ``fn`` on
        another thread (``executor.submit``, say).

        Raises:
            HandOffError: as :meth:`commit`.
        """
        entry = _TaskEntry(save, self, spawn)
        if self._enqueue(entry):
            entry.lead()
        try:
            await entry.future
        except asyncio.CancelledError:
            self._abandon(entry)
            raise
        except BaseException as exc:
            raise _own_error(exc)  # noqa: B904 - chained to the publish's failure inside

    def _enqueue(self, entry: _Entry) -> bool:
        """Queue ``entry``; True if nothing is in flight and its caller leads now."""
        with self._lock:
            self._queue.append(entry)
            if self._busy:
                return False
            self._busy = True
            entry.state = _LEADING
            return True

    def lead_group(self, leader: _Entry, *, rounds: int | None = 0) -> None:
        """Publish the group ``leader`` heads (it is at the head of the queue) and answer its
        members; then, while callers are queued, up to ``rounds`` more groups on this thread
        (None: no limit), answering all their members; then hand the lead to the oldest
        queued caller. A calling thread publishes its own group only (its caller waits for
        nothing else); a thread of a coroutine's executor goes on, which spares each next
        group a thread hop.

        Raises:
            the publish's error, if the first group's failed (the other members get a
            HandOffError each).
        """
        answering: _Entry | None = leader  # the caller running this: not woken, returns
        while True:
            with self._lock:
                group = self._take()
            error: BaseException | None = None
            again = False
            try:
                if group:
                    self._publish([entry.save for entry in group])
            except BaseException as exc:
                # The callers queued meanwhile waited for this attempt: they share its
                # outcome now rather than wait for one more (a broker down fails them all).
                with self._lock:
                    group.extend(self._take_all())
                try:
                    self._recover([entry.save for entry in group], exc)
                except BaseException as final:
                    error = final
            finally:
                with self._lock:
                    self.groups += 1 if group else 0
                    self.grouped += len(group)
                    for entry in group:
                        entry.state = _DONE
                        entry.error = error
                    again = error is None and (rounds is None or rounds > 0) and bool(self._queue)
                    nxt = None if again else self._next_leader()
                if nxt is not None:
                    nxt.lead()
                _answer(group, answering, error)
            if answering is not None and error is not None:
                raise error
            if not again:
                return
            answering = None
            rounds = None if rounds is None else rounds - 1

    def _take(self) -> list[_Entry]:
        """The next group: from the head of the queue, within the limits (lock held)."""
        group: list[_Entry] = []
        size = 0
        queue = self._queue
        while queue and len(group) < self.max_batch:
            body = len(queue[0].save.body)
            if group and size + body > self.max_bytes:
                break
            entry = queue.popleft()
            entry.state = _TAKEN
            group.append(entry)
            size += body
        return group

    def _take_all(self) -> list[_Entry]:
        """Every queued caller, whatever the limits (lock held)."""
        group = list(self._queue)
        self._queue.clear()
        for entry in group:
            entry.state = _TAKEN
        return group

    def _next_leader(self) -> _Entry | None:
        """The oldest queued caller, marked to lead; None (nothing in flight) if there is
        none (lock held). The caller wakes it once the lock is released."""
        if not self._queue:
            self._busy = False
            return None
        nxt = self._queue[0]
        nxt.state = _LEADING
        return nxt

    def _abandon(self, entry: _Entry) -> None:
        """The caller stopped waiting (interrupted, cancelled) before its group was taken:
        drop its snapshot, and pass the lead on if a thread had it (a coroutine's lead is
        its thread's, which goes on). Once taken, the group goes on without the caller."""
        with self._lock:
            if entry.state == _QUEUED:
                self._queue.remove(entry)
                return
            if entry.state != _LEADING or isinstance(entry, _TaskEntry):
                return
            self._queue.remove(entry)
            nxt = self._next_leader()
        if nxt is not None:
            nxt.lead()

    def _after_fork(self) -> None:
        """In a forked child: the callers queued and the publish in flight are the
        parent's threads'; none of them exists here."""
        self._lock = threading.Lock()
        self._queue = deque()
        self._busy = False


def _answer(group: list[_Entry], leader: _Entry | None, error: BaseException | None) -> None:
    """Tell every member but a thread leader (None: the executor published, nobody leads) the
    outcome: threads one by one, each event loop in one callback for all its coroutines."""
    loops: dict[asyncio.AbstractEventLoop, list[_TaskEntry]] = {}
    for entry in group:
        if isinstance(entry, _TaskEntry):
            loops.setdefault(entry.loop, []).append(entry)
        elif entry is not leader:
            entry.settle(error)
    for loop, entries in loops.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these
            loop.call_soon_threadsafe(_resolve, entries, error)


def _resolve(entries: list[_TaskEntry], error: BaseException | None) -> None:
    for entry in entries:
        if entry.future.done():
            continue
        if error is None:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(error)


def _own_error(error: BaseException) -> HandOffError:
    """A fresh error for one caller of a failed group (an exception object raised in several
    threads at once would share its traceback), chained to the publish's failure."""
    if isinstance(error, HandOffError):
        own = HandOffError(str(error))
        own.__cause__ = error.__cause__ if error.__cause__ is not None else error
    else:
        own = HandOffError(
            f"the message carrying this snapshot failed: {type(error).__name__}: {error}"
        )
        own.__cause__ = error
    return own


def _reraise(saves: list[PreparedSave], error: BaseException) -> None:
    raise error


def _reset_after_fork() -> None:
    for commit in list(_LIVE):
        commit._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
