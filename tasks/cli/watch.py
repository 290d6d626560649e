"""``agents-persistence stats --watch``: the metrics, live, refreshed every second.

Gauges are read where the workers' collector reads them (Redis and the broker: queue depth,
dead letters, threads); rates and quantiles come from the workers' ``/metrics`` endpoints
(and agents', if given), as differences between two scrapes: the same numbers Prometheus
computes with ``rate()`` and ``histogram_quantile()`` over the interval.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from agents_persistence.metrics import OUTCOMES
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.worker.app import PersistenceApp
from agents_persistence.tasks.worker.dead_letters import DeadLetters
from agents_persistence.tasks.worker.metrics import queue_depth
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

__all__ = ["Reading", "Scrape", "Watch", "quantile", "read_endpoints"]

HANDOFF = "agents_persistence_handoff_to_durable_seconds"
STORE = "agents_persistence_store_seconds"
MODES = ("buffered", "durable", "write_through")

T = TypeVar("T")


@dataclass
class Scrape:
    """Counters and histogram buckets summed over every endpoint read."""

    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (histogram, label value) -> {upper bound: cumulative count}
    buckets: dict[tuple[str, str], dict[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.endswith("_total"):
                    label = next(iter(s.labels.values()), "")
                    key = (s.name, label)
                    self.counters[key] = self.counters.get(key, 0.0) + s.value
                elif s.name.endswith("_bucket"):
                    label = s.labels.get("op", "")
                    per = self.buckets.setdefault((s.name.removesuffix("_bucket"), label), {})
                    le = float(s.labels["le"])
                    per[le] = per.get(le, 0.0) + s.value

    def counter(self, name: str, label: str) -> float:
        return self.counters.get((name, label), 0.0)


def read_endpoints(urls: Sequence[str], timeout: float = 2.0) -> Scrape:
    """One scrape of every endpoint, summed; an endpoint that fails is noted, not fatal."""
    scrape = Scrape()
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                scrape.add_text(reply.read().decode())
        except Exception as exc:
            scrape.errors.append(f"{url}: {type(exc).__name__}")
    return scrape


def quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]) -> float:
    """``histogram_quantile(q, ...)`` of the observations between two scrapes (NaN: none)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # as Prometheus: the highest finite bound
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class Reading:
    """One refresh: the gauges and a scrape, when they were taken."""

    at: float
    queue: int | None
    dead_letters: int | None
    threads: tuple[int, int] | None
    scrape: Scrape


class Watch:
    """Reads and renders; :meth:`run` refreshes until Ctrl-C (or ``count`` refreshes)."""

    def __init__(
        self,
        app: PersistenceApp,
        store: RedisCheckpointer,
        dead_letters: DeadLetters,
        urls: Sequence[str],
    ) -> None:
        self.app, self.store, self.dead_letters, self.urls = app, store, dead_letters, urls

    def read(self) -> Reading:
        """The gauges (None where unreadable) and one scrape of the endpoints."""
        return Reading(
            at=time.monotonic(),
            queue=_safe(lambda: queue_depth(self.app)),
            dead_letters=_safe(self.dead_letters.count),
            threads=_safe(self.store.count_threads),
            scrape=read_endpoints(self.urls),
        )

    def rows(self, before: Reading, after: Reading) -> list[tuple[str, str]]:
        """The table's rows for the interval between two readings."""
        dt = max(after.at - before.at, 1e-9)
        old, new = before.scrape, after.scrape

        def rate(name: str, label: str) -> float:
            return max(0.0, new.counter(name, label) - old.counter(name, label)) / dt

        def ms(value: float) -> str:
            return "-" if math.isnan(value) else f"{value * 1000:,.1f} ms"

        def shown(value: object) -> str:
            return "?" if value is None else f"{value:,}"

        live, expired = after.threads if after.threads is not None else (None, None)
        rows = [
            ("queue depth", shown(after.queue)),
            ("dead letters", shown(after.dead_letters)),
            ("threads live / expired", f"{shown(live)} / {shown(expired)}"),
        ]
        handoffs = " ".join(
            f"{m} {rate('agents_persistence_handoffs_total', m):,.1f}" for m in MODES
        )
        rows.append(("hand-offs/s", handoffs))
        writes = " ".join(
            f"{o} {rate('agents_persistence_saves_total', o):,.1f}" for o in OUTCOMES
        )
        rows.append(("writes/s", writes))
        lag_old, lag_new = old.buckets.get((HANDOFF, ""), {}), new.buckets.get((HANDOFF, ""), {})
        rows.append(
            (
                "hand-off to durable p50 / p99",
                f"{ms(quantile(0.5, lag_old, lag_new))} / {ms(quantile(0.99, lag_old, lag_new))}",
            )
        )
        for (name, op), per in sorted(new.buckets.items()):
            if name != STORE:
                continue
            prev = old.buckets.get((name, op), {})
            if per.get(math.inf, 0.0) - prev.get(math.inf, 0.0) > 0:
                rows.append(
                    (
                        f"store {op} p50 / p99",
                        f"{ms(quantile(0.5, prev, per))} / {ms(quantile(0.99, prev, per))}",
                    )
                )
        retries = sum(
            max(0.0, v - old.counters.get(k, 0.0)) / dt
            for k, v in new.counters.items()
            if k[0] == "agents_persistence_store_retries_total"
        )
        rows.append(("store retries/s", f"{retries:,.1f}"))
        if after.scrape.errors:
            rows.append(("unreachable", "; ".join(after.scrape.errors)))
        elif not self.urls:
            rows.append(("metrics", "no endpoint (set METRICS_PORT or --metrics-url)"))
        return rows

    def table(self, before: Reading, after: Reading) -> Table:
        settings = self.app.settings
        table = Table(
            title=f"namespace {escape(settings.namespace)}, queue {escape(settings.queue)}",
            caption="Ctrl-C to stop",
            show_header=False,
        )
        table.add_column(style="bold")
        table.add_column(justify="right")
        for name, value in self.rows(before, after):
            table.add_row(escape(name), escape(value))
        return table

    def run(self, console: Console, interval: float = 1.0, count: int | None = None) -> None:
        before = self.read()
        done = 0
        try:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while count is None or done < count:
                    time.sleep(interval)
                    after = self.read()
                    live.update(self.table(before, after), refresh=True)
                    before, done = after, done + 1
        except KeyboardInterrupt:
            return


def _safe(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception:
        return None


def default_urls(port: int | None, given: Iterable[str]) -> list[str]:
    """The endpoints to read: ``given``, else the local worker's when a port is set."""
    urls = list(given)
    if not urls and port is not None:
        urls = [f"http://127.0.0.1:{port}/metrics"]
    return urls
