"""Waiting until hand-offs are durable, without I/O: the blocking and the asyncio client run
the same wait and differ only in how they read the store and sleep.

A wait polls the versions the store holds for the threads still awaited, drops those held
(or superseded), raises :class:`~agents_persistence.errors.FlushTimeout` at its deadline,
has the client re-send hand-offs not durable after its resend delay, and backs off from
2 ms to 100 ms between polls::

    wait = DurabilityWait(client, wanted, timeout)
    while not wait.observe(store.stored_versions(wait.threads)):
        client.resend(wait.overdue())
        sleep(wait.next_delay())
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

from agents_persistence.checkpoint import PreparedSave
from agents_persistence.errors import FlushTimeout

if TYPE_CHECKING:
    from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer

__all__ = ["DurabilityWait", "Receipt"]

ClientT = TypeVar("ClientT")

_FIRST_DELAY = 0.002
_MAX_DELAY = 0.1


class DurabilityWait:
    """One wait until the store holds each of ``wanted`` (thread id -> version) or newer.

    Args:
        client: the hand-off client whose outbox the observations settle.
        wanted: the versions to wait for.
        timeout: seconds until :meth:`observe` raises FlushTimeout (None: no limit).
    """

    def __init__(
        self, client: CeleryCheckpointer, wanted: Mapping[str, int], timeout: float | None
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._waiting = dict(wanted)
        self._delay = _FIRST_DELAY

    @property
    def threads(self) -> list[str]:
        """The threads still awaited (what to read from the store next)."""
        return list(self._waiting)

    def observe(self, held: Mapping[str, int]) -> bool:
        """Take in what the store holds: True once nothing is awaited any more.

        Raises:
            FlushTimeout: naming what is still pending, once the deadline passed.
        """
        self._client.settle(held)
        for tid in [tid for tid, v in self._waiting.items() if held.get(tid, 0) >= v]:
            del self._waiting[tid]
        if not self._waiting:
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise FlushTimeout(sorted(self._waiting.items()), self._timeout)
        return False

    def overdue(self) -> list[PreparedSave]:
        """The awaited hand-offs due to be sent again (marked as re-sent now)."""
        return self._client.take_overdue(self._waiting)

    def next_delay(self) -> float:
        """Seconds to sleep before the next poll (doubling, capped, never past the deadline)."""
        delay, self._delay = self._delay, min(self._delay * 2, _MAX_DELAY)
        if self._deadline is None:
            return delay
        return min(delay, max(0.0, self._deadline - time.monotonic()))


class Receipt(Generic[ClientT]):
    """What a client's ``save_state`` returns: the thread, the version, and (in subclasses)
    a ``wait`` for it to be durable."""

    __slots__ = ("_client", "thread_id", "version")

    def __init__(self, client: ClientT, thread_id: str, version: int) -> None:
        self._client = client
        self.thread_id = thread_id
        self.version = version

    def __repr__(self) -> str:
        return f"{type(self).__name__}(thread_id={self.thread_id!r}, version={self.version})"
