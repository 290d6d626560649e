"""Version numbers for saves: monotonic within a process, clock-based across processes."""

from __future__ import annotations

import threading
import time

__all__ = ["VersionClock", "next_version"]


class VersionClock:
    """Hands out strictly increasing versions: ``max(last + 1, time.time_ns())``.

    Nanoseconds since the epoch order saves across processes as well as their clocks agree
    and stay below ``2**63`` until 2262. Within one process a version is always greater than
    every version handed out before, even if the wall clock steps back.
    """

    __slots__ = ("_last", "_lock")

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """The next version."""
        now = time.time_ns()
        with self._lock:
            self._last = now if now > self._last else self._last + 1
            return self._last

    def observe(self, version: int) -> None:
        """Make every later version greater than ``version`` (e.g. one read from the store)."""
        with self._lock:
            self._last = max(self._last, version)


_PROCESS_CLOCK = VersionClock()


def next_version() -> int:
    """The next version from this process's clock."""
    return _PROCESS_CLOCK.next()
