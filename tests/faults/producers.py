"""A stream of hand-offs from several producer threads, recorded in a :class:`Ledger`.

Every save carries an explicit version from one shared :class:`VersionClock`, so versions
are unique across producers and the ledger knows the version of a save even when
``save_state`` raised. Producers share the thread ids, so concurrent saves of one thread
reach the workers in any order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents_persistence import VersionClock
from agents_persistence.tasks import CeleryCheckpointer

from tests.faults.reconcile import Ledger, snapshot_for

__all__ = ["Stream", "thread_ids"]


def thread_ids(prefix: str, n: int) -> list[str]:
    """``n`` thread ids such as ``<prefix>-0007``."""
    return [f"{prefix}-{i:04d}" for i in range(n)]


@dataclass
class Stream:
    """``producers`` threads handing off ``total`` saves (at most ``rate`` per second overall).

    Args:
        client: the hand-off client (thread-safe).
        ledger: where every hand-off is recorded.
        threads: the thread ids to save (chosen at random for each save).
        total: saves to attempt in all.
        producers: producer threads.
        rate: overall saves per second (None: as fast as the broker takes them).
        pad: bytes of padding in each snapshot.
        on_save: called after each attempt (e.g. to delete a thread now and then).
    """

    client: CeleryCheckpointer
    ledger: Ledger
    threads: Sequence[str]
    total: int
    producers: int = 4
    rate: float | None = None
    pad: int = 0
    on_save: Callable[[int], None] | None = None
    clock: VersionClock = field(default_factory=VersionClock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    #: The slowest save_state calls (seconds), to show the agent never waits on the store.
    max_latency: float = 0.0

    def start(self) -> Stream:
        self._started = time.monotonic()
        for i in range(self.producers):
            t = threading.Thread(target=self._run, args=(i,), name=f"producer-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        return self

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= self.total or self._stop.is_set():
                return None
            n = self._next
            self._next += 1
            return n

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while (n := self._claim()) is not None:
                if self.rate is not None:
                    due = self._started + n / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                tid = rng.choice(self.threads)
                version = self.clock.next()
                began = time.monotonic()
                try:
                    self.client.save_state(tid, snapshot_for(tid, version, pad=self.pad),
                                           version=version)  # fmt: skip
                except Exception as exc:
                    self.ledger.failed(tid, version, exc)
                else:
                    self.ledger.handed_off(tid, version)
                took = time.monotonic() - began
                if took > self.max_latency:
                    with self._lock:
                        self.max_latency = max(self.max_latency, took)
                if self.on_save is not None:
                    self.on_save(n)
        except BaseException as exc:  # a bug in the harness itself: surface it in join()
            self.errors.append(exc)

    def wait_for(self, attempted: int, timeout: float = 60.0) -> None:
        """Block until at least ``attempted`` saves were attempted."""
        deadline = time.monotonic() + timeout
        while len(self.ledger) < attempted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.ledger)} of {attempted} saves attempted")
            if self.errors:
                raise self.errors[0]
            time.sleep(0.01)

    def join(self, timeout: float = 300.0) -> None:
        """Wait for every producer to finish; re-raise a harness error."""
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            self._stop.set()
            raise TimeoutError("producers did not finish in time")
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        """Ask the producers to stop after their current save."""
        self._stop.set()
