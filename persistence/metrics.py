"""Prometheus metrics of the layer: one registry, the names fixed, cheap to record.

Every process that saves, writes or hands off records into the same metric objects (built
on first use, in :func:`metrics`); what serves them depends on the process:

- a worker (``AGENTS_PERSISTENCE_METRICS_PORT`` set) switches to prometheus_client's
  multiprocess mode before its pool forks and serves every pool process's counts at
  ``/metrics`` (:mod:`agents_persistence.tasks.worker.metrics`);
- an agent process serves its own with :func:`serve` (or adds :func:`registry` to the
  exposition it already has).

The names (:data:`METRICS`; the README's table is checked against it):

=============================================  =========  ====================================
``agents_persistence_saves_total``             counter    ``outcome``: written, duplicate,
                                                          stale, failed (dead-lettered)
``agents_persistence_deletes_total``           counter    ``outcome``: as saves
``agents_persistence_handoffs_total``          counter    ``mode``: buffered, durable,
                                                          write_through
``agents_persistence_handoff_to_durable_seconds`` histogram  hand-off (the message's
                                                          ``saved_at_ms``) to stored
``agents_persistence_store_seconds``           histogram  ``op``: one store call, retries
                                                          included
``agents_persistence_store_retries_total``     counter    ``op``
``agents_persistence_dead_letters``            gauge      read from Redis at scrape time
``agents_persistence_queue_depth``             gauge      read from the broker at scrape time
``agents_persistence_threads``                 gauge      ``state``: live, expired (not yet
                                                          cleaned up)
=============================================  =========  ====================================

Only the core's own modules import this one (never Celery).
"""

from __future__ import annotations

import bisect
import glob
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import values as _values

__all__ = [
    "METRICS",
    "MULTIPROC_ENV",
    "Metrics",
    "NullMetrics",
    "disable",
    "enable",
    "metrics",
    "multiprocess_dir",
    "registry",
    "serve",
    "use_multiprocess",
]

#: prometheus_client's multiprocess directory variable.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

PREFIX: Final = "agents_persistence_"

#: Every metric the layer exposes: name -> (type, labels). The README's table lists these.
METRICS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "agents_persistence_saves_total": ("counter", ("outcome",)),
    "agents_persistence_deletes_total": ("counter", ("outcome",)),
    "agents_persistence_handoffs_total": ("counter", ("mode",)),
    "agents_persistence_handoff_to_durable_seconds": ("histogram", ()),
    "agents_persistence_store_seconds": ("histogram", ("op",)),
    "agents_persistence_store_retries_total": ("counter", ("op",)),
    "agents_persistence_dead_letters": ("gauge", ()),
    "agents_persistence_queue_depth": ("gauge", ()),
    "agents_persistence_threads": ("gauge", ("state",)),
}

#: Outcomes of a write as counted (``failed``: dead-lettered).
OUTCOMES: Final = ("written", "duplicate", "stale", "failed")

#: Hand-off to stored: from a few milliseconds (buffered, idle fleet) to minutes (backlog,
#: outage and Celery retries).
HANDOFF_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
#: One store call: a round trip (~0.1-2 ms) up to the retry deadline (15 s by default).
STORE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0,
)  # fmt: skip


@dataclass(eq=False)
class Metrics:
    """The metric objects of one process (in one registry), with their labelled children
    cached: recording is a dict lookup and an increment."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.saves = Counter(
            f"{PREFIX}saves", "Snapshots a worker finished, by outcome.", ["outcome"], registry=r
        )
        self.deletes = Counter(
            f"{PREFIX}deletes", "Deletes a worker finished, by outcome.", ["outcome"], registry=r
        )
        self.handoffs = Counter(
            f"{PREFIX}handoffs",
            "Snapshots an agent handed off, by mode (write_through: written synchronously "
            "because the broker was down).",
            ["mode"],
            registry=r,
        )
        self.handoff_to_durable = Histogram(
            f"{PREFIX}handoff_to_durable_seconds",
            "From an agent's hand-off to the worker's stored outcome.",
            buckets=HANDOFF_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            f"{PREFIX}store_seconds",
            "One store call, its retries included, by operation.",
            ["op"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_retries = Counter(
            f"{PREFIX}store_retries",
            "Retries of store calls after transient errors, by operation.",
            ["op"],
            registry=r,
        )
        self._counters: dict[tuple[str, str], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}
        self._lock = threading.Lock()

    def _counter(self, parent: Counter, value: str) -> Counter:
        key = (parent._name, value)
        child = self._counters.get(key)
        if child is None:
            with self._lock:
                child = self._counters[key] = parent.labels(value)
        return child

    def _histogram(self, parent: Histogram, value: str) -> Histogram:
        key = (parent._name, value)
        child = self._histograms.get(key)
        if child is None:
            with self._lock:
                child = self._histograms[key] = parent.labels(value)
        return child

    # -- recording ----------------------------------------------------------------------------
    def saved(self, outcome: str, saved_at_ms: int | None = None, count: int = 1) -> None:
        """``count`` saves ended with ``outcome``; a stored one (not ``failed``) with its
        hand-off time ``saved_at_ms`` observes hand-off to durable."""
        self._counter(self.saves, outcome).inc(count)
        if saved_at_ms is not None and outcome != "failed":
            self.handoff_to_durable.observe(max(0.0, time.time() - saved_at_ms / 1000.0))

    def saved_batch(self, stored: Sequence[tuple[str, int]]) -> None:
        """Saves of one batch, each ``(outcome, saved_at_ms)``: a counter increment per
        outcome, and the hand-off times into the histogram bucket by bucket (one increment
        per bucket touched, not per save: each is a file write in multiprocess mode)."""
        if not stored:
            return
        now = time.time()
        outcomes: dict[str, int] = {}
        lags: list[float] = []
        for outcome, saved_at_ms in stored:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            lags.append(max(0.0, now - saved_at_ms / 1000.0))
        for outcome, count in outcomes.items():
            self._counter(self.saves, outcome).inc(count)
        _observe_many(self.handoff_to_durable, lags)

    def deleted(self, outcome: str) -> None:
        """A delete ended with ``outcome``."""
        self._counter(self.deletes, outcome).inc()

    def handed_off(self, mode: str, count: int = 1) -> None:
        """An agent handed off ``count`` snapshots in ``mode``."""
        self._counter(self.handoffs, mode).inc(count)

    def store_call(self, op: str, seconds: float) -> None:
        """One store call (its retries included) took ``seconds``."""
        self._histogram(self.store_seconds, op).observe(seconds)

    def store_retry(self, op: str) -> None:
        """A store call is retried after a transient error."""
        self._counter(self.store_retries, op).inc()


def _observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe`` of each amount, with one increment per bucket touched."""
    try:  # prometheus_client's internals (0.20 to 0.26 at least); else one by one
        bounds: list[float] = histogram._upper_bounds
        buckets = histogram._buckets
        total = histogram._sum
    except AttributeError:
        for amount in amounts:
            histogram.observe(amount)
        return
    per_bucket: dict[int, int] = {}
    for amount in amounts:
        i = bisect.bisect_left(bounds, amount)
        per_bucket[i] = per_bucket.get(i, 0) + 1
    total.inc(sum(amounts))
    for i, count in per_bucket.items():
        buckets[i].inc(count)


class NullMetrics(Metrics):
    """Recording turned off: every call does nothing (:func:`disable`)."""

    def saved(self, outcome: str, saved_at_ms: int | None = None, count: int = 1) -> None:
        return None

    def saved_batch(self, stored: Sequence[tuple[str, int]]) -> None:
        return None

    def deleted(self, outcome: str) -> None:
        return None

    def handed_off(self, mode: str, count: int = 1) -> None:
        return None

    def store_call(self, op: str, seconds: float) -> None:
        return None

    def store_retry(self, op: str) -> None:
        return None


_current: Metrics | None = None
_paused: Metrics | None = None
_build_lock = threading.Lock()


def disable() -> None:
    """Record nothing in this process from now on (until :func:`enable`)."""
    global _current, _paused
    with _build_lock:
        if not isinstance(_current, NullMetrics):
            _paused, _current = _current, NullMetrics()


def enable() -> None:
    """Record again, into the same metric objects as before :func:`disable`."""
    global _current, _paused
    with _build_lock:
        if isinstance(_current, NullMetrics):
            _current, _paused = _paused, None


def metrics() -> Metrics:
    """This process's metric objects (built on first use)."""
    current = _current
    if current is None:
        current = _build()
    return current


def _build() -> Metrics:
    global _current  # noqa: PLW0603 - one set of metric objects per process
    with _build_lock:
        if _current is None:
            _current = Metrics()
        return _current


def registry() -> CollectorRegistry:
    """The registry holding this process's metrics (single-process mode)."""
    return metrics().registry


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve this process's metrics at ``http://addr:port/metrics`` (a daemon thread).

    For an agent process; workers serve theirs when ``METRICS_PORT`` is set.
    """
    start_http_server(port, addr=addr, registry=registry())


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, if any."""
    return os.environ.get(MULTIPROC_ENV)


def use_multiprocess(directory: str | None = None) -> str:
    """Switch this process (and the processes it forks afterwards) to multiprocess mode.

    Each process then writes its values to its own files in ``directory`` (default:
    ``$PROMETHEUS_MULTIPROC_DIR``, else a new temp dir), and a
    ``prometheus_client.multiprocess.MultiProcessCollector`` over it sums them. Files left
    by an earlier run are removed first (their counts would be added again). Call it before
    the processes fork, and before anything records; metric objects built earlier are
    dropped (the next :func:`metrics` builds them in the new mode).

    Returns:
        the directory.
    """
    global _current  # noqa: PLW0603 - one set of metric objects per process
    path = directory or os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="agents-persistence-metrics-")
    os.environ[MULTIPROC_ENV] = path
    with _build_lock:
        # prometheus_client picks its value class when first imported; it was imported
        # before the directory was known, so pick again (before any metric is built).
        _values.ValueClass = _values.get_value_class()  # type: ignore[no-untyped-call]
        _current = None
    return path
