"""What a chaos run checks once everything is healed, and the report it prints.

* :class:`VersionWatch`: a thread's stored version never goes down between two
  observations (sampled during the run, once more at the end).
* :func:`settle`: waits — without any client flush — until every save handed off has an
  outcome in the store (stored at its version or superseded by a newer one) or in the
  dead-letter list, and the broker holds nothing queued or unacknowledged.
* :func:`find_resurrected`: a deleted thread stays deleted unless a newer save was attempted.
* :func:`probe_workers`: fresh saves handed off after healing are stored (the workers answer).
* :class:`ChaosReport`: the timeline, the reconciliation (per hand-off mode) and the checks.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis
from agents_persistence import (
    HandOffError,
    PersistenceError,
    RedisCheckpointer,
    VersionClock,
)
from agents_persistence.tasks import CeleryCheckpointer
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from rich.console import Console
from rich.table import Table

from tests.faults.chaos_faults import Applied
from tests.faults.conftest import Fleet
from tests.faults.reconcile import (
    Ledger,
    Reconciliation,
    dead_lettered_saves,
    read_dead_letters,
    snapshot_for,
    version_of,
)

__all__ = [
    "ChaosConfig",
    "ChaosReport",
    "VersionWatch",
    "broker_depth",
    "broker_notes",
    "find_resurrected",
    "probe_workers",
    "settle",
]


class VersionWatch:
    """Every observation of a thread's stored version must be >= every earlier one."""

    def __init__(self, store: RedisCheckpointer, threads: list[str]) -> None:
        self.store, self.threads = store, threads
        self.seen: dict[str, int] = {}
        self.regressions: list[str] = []
        self.samples = 0
        self._lock = threading.Lock()

    def observe(self) -> None:
        """Read every thread's version (one pipelined round trip) and compare."""
        held = self.store.stored_versions(self.threads)
        with self._lock:
            for tid, version in held.items():
                last = self.seen.get(tid, 0)
                if version < last:
                    self.regressions.append(f"{tid}: {last} -> {version}")
                self.seen[tid] = max(last, version)
            self.samples += 1


@dataclass
class ChaosConfig:
    """One run's knobs; requests are bounded by ``rate`` x ``seconds`` per hand-off mode."""

    seed: int
    seconds: float = 120.0
    workers: int = 2
    concurrency: int = 2
    threads: int = 400
    rate: float = 25.0
    delete_interval: float = 0.5
    mean_gap: float = 4.0
    #: kombu's sweep of unacknowledged messages takes a mutex in the broker; a worker killed
    #: or stopped while holding it holds back every restore until it expires (2 x the restore
    #: interval, at least 5 s: agents_persistence.tasks.worker.app; kombu's own was 300 s).
    settle_timeout: float = 180.0
    probe_timeout: float = 90.0


@dataclass
class ChaosReport:
    """Everything a run measured; :meth:`problems` lists the broken invariants."""

    config: ChaosConfig
    timeline: list[Applied]
    results: dict[str, Reconciliation]
    resurrected: list[str]
    regressions: list[str]
    samples: int
    failed_but_stored: int
    delete_errors: Counter[str]
    settle_seconds: float
    pending_at_end: list[str]
    broker_depth: tuple[int, int]
    probe: tuple[int, int, float]
    workers_running: tuple[int, int]
    crashes: list[str]
    harness_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lost(self, mode: str = "all") -> int:
        """Saves handed off that have no outcome at all."""
        return self.results[mode].lost

    def problems(self) -> list[str]:
        """The invariants this run broke (empty: clean)."""
        out = []
        if self.lost():
            out.append(f"lost {self.lost()}: {self.results['all'].lost_examples}")
        if self.regressions:
            out.append(f"version regressions: {self.regressions[:10]}")
        if self.resurrected:
            out.append(f"resurrected: {self.resurrected[:10]}")
        if self.results["all"].untyped_errors:
            out.append(f"untyped errors: {self.results['all'].extra}")
        if set(self.delete_errors) - {"StoreUnavailable"}:
            out.append(f"delete errors: {dict(self.delete_errors)}")
        if self.probe[0] != self.probe[1]:
            out.append(f"fresh saves stored after healing: {self.probe[0]}/{self.probe[1]}")
        if self.workers_running[0] != self.workers_running[1]:
            out.append(f"workers running: {self.workers_running}")
        if self.broker_depth != (0, 0):
            out.append(f"broker not empty: {self.broker_depth}")
        return out + self.harness_errors

    def render(self, console: Console) -> None:
        """Print the seed, the fault timeline and the reconciliation table."""
        cfg = self.config
        console.print(
            f"chaos seed {cfg.seed}: {cfg.seconds:.0f} s, {cfg.workers} workers x "
            f"{cfg.concurrency}, {cfg.rate:g} saves/s per mode, {cfg.threads} threads"
        )
        timeline = Table(
            "#",
            "at s",
            "began s",
            "healed s",
            "target",
            "action",
            "outage s",
            "note",
            title=f"fault timeline (seed {cfg.seed})",
        )
        for n, a in enumerate(self.timeline, 1):
            f = a.fault
            timeline.add_row(
                str(n),
                f"{f.at:.1f}",
                _s(a.began),
                _s(a.healed),
                f.target,
                f.action,
                f"{f.outage:.1f}",
                a.note,
            )
        console.print(timeline)
        table = Table(
            "", "all", "durable mode", "buffered mode", title=f"reconciliation (seed {cfg.seed})"
        )
        rows: list[tuple[str, Callable[[str], object]]] = [
            ("attempted", lambda m: self.results[m].attempted),
            ("handed off", lambda m: self.results[m].handed_off),
            ("durable", lambda m: self.results[m].durable),
            ("superseded", lambda m: self.results[m].superseded),
            ("dead-lettered", lambda m: self.results[m].dead_lettered),
            ("failed to caller", lambda m: self.results[m].failed),
            ("lost", self.lost),
        ]
        for label, get in rows:
            table.add_row(label, *(str(get(m)) for m in ("all", "durable", "buffered")))
        everything = self.results["all"]
        kinds = Counter(
            f"{a.fault.target.split('-')[0]} {a.fault.action}"
            for a in self.timeline
            if a.began is not None
        )
        for label, value in (
            ("faults applied", ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))),
            ("deletes / stayed deleted", f"{everything.deletes} / {everything.stayed_deleted}"),
            (
                "deleted threads back",
                f"{len(self.resurrected)} (counting only saves that returned: "
                f"{everything.resurrected})",
            ),
            ("version regressions", f"{len(self.regressions)} in {self.samples} samples"),
            ("failed to caller, yet stored", self.failed_but_stored),
            ("untyped errors", everything.untyped_errors),
            ("delete errors", dict(self.delete_errors) or "none"),
            (
                "settled without flush",
                f"{self.settle_seconds:.1f} s, pending "
                f"{len(self.pending_at_end)}, broker {self.broker_depth}",
            ),
            (
                "fresh saves after healing",
                f"{self.probe[0]}/{self.probe[1]} stored in {self.probe[2]:.1f} s",
            ),
            ("workers running", f"{self.workers_running[0]}/{self.workers_running[1]}"),
            ("worker crashes (not our SIGKILL)", len(self.crashes)),
        ):
            table.add_row(label, str(value), "", "")
        console.print(table)
        for note in self.notes:
            console.print(f"note: {note}", highlight=False)
        for problem in self.problems():
            console.print(f"[red]PROBLEM[/red] {problem}", highlight=False)
        for crash in self.crashes:
            console.print(f"[red]CRASH[/red] {crash}", highlight=False)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pending(fleet: Fleet, ledger: Ledger) -> list[str]:
    """Saves handed off that the store neither holds (or superseded) nor dead-lettered."""
    dead = dead_lettered_saves(read_dead_letters(fleet.store))
    held = fleet.store.stored_versions(ledger.thread_ids)
    return [
        f"{s.thread_id}@{s.version}"
        for s in ledger.saves
        if s.error is None
        and held.get(s.thread_id, 0) < s.version
        and (s.thread_id, s.version) not in dead
    ]


def broker_depth(fleet: Fleet) -> tuple[int, int]:
    for _ in range(5):  # the raw client's first command after a broker restart may fail
        with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return fleet.broker_depth()
        time.sleep(0.2)
    return fleet.broker_depth()


def broker_notes(fleet: Fleet) -> str:
    """What the Redis broker still holds: unacknowledged messages, their age, the sweep's
    mutex, in-flight lists."""
    raw, now = fleet.broker_client(), time.time()
    index = cast(list[tuple[bytes, float]], raw.zrange("unacked_index", 0, -1, withscores=True))
    ages = [now - score for _, score in index]
    inflight = {k: int(raw.llen(k)) for k in raw.hkeys(INFLIGHT_REGISTRY)}
    ttl = int(raw.pttl("unacked_mutex"))
    mutex = f"{ttl / 1000:.0f} s" if ttl >= 0 else "absent"
    return (
        f"unacked {len(ages)} (oldest {max(ages, default=0):.0f} s), unacked_mutex ttl "
        f"{mutex}, queued {int(raw.llen(fleet.queue))}, in flight {sum(inflight.values())}"
    )


def settle(
    fleet: Fleet, ledger: Ledger, cfg: ChaosConfig, on_poll: Callable[[], None]
) -> tuple[float, list[str], list[str]]:
    """Wait, without any flush, until every hand-off has an outcome and the broker is
    empty; give up after ``settle_timeout``. Calls ``on_poll`` at each look; returns the
    seconds waited, the saves still without an outcome, and what the broker held whenever
    the wait passed another minute."""
    started = time.monotonic()
    seen: list[str] = []
    while True:
        on_poll()
        try:
            pending, depth = _pending(fleet, ledger), broker_depth(fleet)
        except (PersistenceError, redis.RedisError) as exc:
            pending, depth = [f"unreadable: {exc}"], (-1, -1)
        now = time.monotonic()
        if (not pending and depth == (0, 0)) or now - started > cfg.settle_timeout:
            return now - started, pending, seen
        if now - started > 60 * (len(seen) + 1):
            with contextlib.suppress(redis.RedisError):
                seen.append(f"after {now - started:.0f} s: {broker_notes(fleet)}")
        time.sleep(0.5)


def find_resurrected(ledger: Ledger, store: RedisCheckpointer) -> tuple[list[str], int]:
    """Deleted threads live again without a newer save attempted (ok or failed to the
    caller: a durable hand-off that timed out may still have reached the broker), and the
    number of saves that failed to the caller but are stored."""
    attempted: dict[str, set[int]] = {}
    for s in ledger.saves:
        attempted.setdefault(s.thread_id, set()).add(s.version)
    held = store.stored_versions(ledger.thread_ids)
    back: list[str] = []
    for tid, tomb in ledger.deletes.items():
        checkpoint = store.load_checkpoint(tid)
        if checkpoint is None:
            revived = held.get(tid, 0) < tomb
        else:
            revived = not (
                checkpoint.version > tomb
                and checkpoint.version in attempted.get(tid, set())
                and version_of(checkpoint.state) == (tid, checkpoint.version)
            )
        if revived:
            back.append(f"{tid}: tombstone {tomb}, holds {held.get(tid, 0)}")
    failed_stored = sum(
        1 for s in ledger.saves if s.error is not None and held.get(s.thread_id) == s.version
    )
    return back, failed_stored


def _hand_off_probe(client: CeleryCheckpointer, tid: str, version: int) -> None:
    """Hand off one probe save. A buffered client reports, on the next call, a publish that
    failed during the faults (it kept that batch and published it later; the save that raised
    was not taken): hand the probe off again, up to three times."""
    for attempt in range(3):
        try:
            client.save_state(tid, snapshot_for(tid, version), version=version)
            return
        except HandOffError:
            if attempt == 2:
                raise


def probe_workers(
    fleet: Fleet, clients: list[CeleryCheckpointer], clock: VersionClock, timeout: float
) -> tuple[int, int, float]:
    """Hand off fresh saves on new threads from every client; how many are stored in time."""
    want: dict[str, int] = {}
    began = time.monotonic()
    for c, client in enumerate(clients):
        for n in range(4):
            tid, version = f"probe-{c}-{n}-{uuid.uuid4().hex[:6]}", clock.next()
            _hand_off_probe(client, tid, version)
            want[tid] = version
    stored = 0
    while time.monotonic() - began < timeout:
        held = fleet.store.stored_versions(list(want))
        stored = sum(1 for tid, v in want.items() if held.get(tid, 0) >= v)
        if stored == len(want):
            break
        time.sleep(0.2)
    return stored, len(want), time.monotonic() - began
