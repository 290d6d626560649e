"""A daemon thread for the hand-off client's housekeeping (pruning its outbox), off every
caller's path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Housekeeper"]

logger = logging.getLogger(__name__)


class Housekeeper:
    """A daemon thread that runs ``job`` when woken, off every caller's path.

    ``job`` may fail (the store is down, say): the failure is logged and the job runs again
    after a capped backoff while it is still wanted, never raising into a caller.
    """

    def __init__(self, job: Callable[[], None], *, name: str) -> None:
        self._job, self._name = job, name
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wake(self) -> None:
        """Ask for one run soon (starts the thread on first use)."""
        self._wanted.set()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopped.is_set():
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        """End the thread (a run under way finishes first)."""
        self._stopped.set()
        self._wanted.set()

    def _run(self) -> None:
        backoff = 0.1
        while True:
            self._wanted.wait()
            if self._stopped.is_set():
                return
            self._wanted.clear()
            try:
                self._job()
            except Exception as exc:
                logger.warning("%s: %s; trying again in %.1fs", self._name, exc, backoff)
                self._wanted.set()
                if self._stopped.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.1
