"""The task retry schedule: one object computes each countdown and the sum of them all.

A worker task whose store stayed unavailable is retried by Celery after a countdown drawn
from this schedule (``agents_persistence.tasks.worker.handlers``), and the settings add the
same countdowns up to check that a tombstone outlives every retry of an older save
(``Settings.task_retry_span_seconds``). Both read this class, so the two cannot drift.

Retry ``n`` (counted from 0) waits a random time in ``[c / 2, c]`` with
``c = min(cap, base * 2**n)`` ("equal jitter": spread out, never shorter than half).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

__all__ = ["Backoff"]

#: Exponents above this would overflow a float; the cap has long been reached by then.
_MAX_EXPONENT = 1000


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with equal jitter.

    Args:
        cap: the longest single countdown, in seconds.
        base: the ceiling of the first countdown, in seconds.
    """

    cap: float
    base: float = 1.0

    def __post_init__(self) -> None:
        if not (self.cap > 0 and self.base > 0):
            raise ValueError("backoff cap and base must be positive")

    def ceiling(self, retry: int) -> float:
        """The longest countdown before retry number ``retry`` (0 for the first)."""
        return min(self.cap, self.base * 2.0 ** min(max(retry, 0), _MAX_EXPONENT))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A jittered countdown before retry number ``retry``: in ``[ceiling / 2, ceiling]``."""
        top = self.ceiling(retry)
        return (rng or _RANDOM).uniform(top / 2, top)

    def span(self, retries: int) -> float:
        """The longest total of the countdowns of ``retries`` retries (an upper bound)."""
        return sum(self.ceiling(n) for n in range(max(retries, 0)))


_RANDOM = random.Random()
# Reseeded in a forked child: a prefork worker's pool children would otherwise draw the same
# countdowns, and the jitter would not spread their retries.
os.register_at_fork(after_in_child=_RANDOM.seed)
