"""A seeded chaos run: random faults on every part of a fleet, then heal, wait, reconcile.

:func:`run` drives a :class:`~tests.faults.conftest.Fleet` on a Redis broker (store and
broker on private redis-servers with an AOF, ``appendfsync always``, so a SIGKILL loses
nothing acknowledged) through the seeded fault timeline of
:mod:`tests.faults.chaos_faults`, while producers hand off saves in both modes (a durable
and a buffered client, one version clock, one set of threads), a deleter deletes threads at
random and a :class:`~tests.faults.chaos_report.VersionWatch` samples every thread's stored
version. When the timeline ends it heals everything, stops the producers, waits without any
client flush (the client's re-send is off, as in the whole fault suite) and reconciles:
nothing lost, no version regression, no deleted thread back, workers still storing fresh
saves (:mod:`tests.faults.chaos_report`). Requests are bounded by ``rate`` x ``seconds``
per mode; every server listens on 127.0.0.1 only.

From pytest: ``tests/faults/test_chaos.py`` (a fixed seed, two minutes). From a shell:
``scripts/chaos --seed 7 --minutes 10`` (``python -m tests.faults.chaos``), which starts its
own servers and workers (:func:`open_fleet`) and prints the seed, the timeline and the table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agents_persistence import RedisCheckpointer, VersionClock
from agents_persistence.config import Settings
from rich.console import Console

from tests.faults.chaos_faults import Executor, make_schedule
from tests.faults.chaos_report import (
    ChaosConfig,
    ChaosReport,
    VersionWatch,
    broker_depth,
    broker_notes,
    find_resurrected,
    probe_workers,
    settle,
)
from tests.faults.conftest import FAULT_SETTINGS, Fleet
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger, read_dead_letters, reconcile
from tests.support import RedisServer
from tests.support.celery_worker import CeleryWorker, settings_env

__all__ = ["ChaosConfig", "ChaosReport", "main", "open_fleet", "run"]


class _Tee(Ledger):
    """A ledger of one hand-off mode that also records into the run's combined ledger."""

    def __init__(self, combined: Ledger) -> None:
        super().__init__()
        self.combined = combined

    def handed_off(self, thread_id: str, version: int) -> None:
        super().handed_off(thread_id, version)
        self.combined.handed_off(thread_id, version)

    def failed(self, thread_id: str, version: int, exc: BaseException) -> None:
        super().failed(thread_id, version, exc)
        self.combined.failed(thread_id, version, exc)


class _Loop(threading.Thread):
    """A daemon thread that runs ``step`` every ``interval`` seconds and never raises."""

    def __init__(self, step: Callable[[], None], interval: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.step, self.interval, self.halt = step, interval, threading.Event()
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                self.step()
            except Exception as exc:  # counted by type; the caller judges them
                self.errors[type(exc).__name__] += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(30.0)


def run(fleet: Fleet, cfg: ChaosConfig, log: Callable[[str], None] | None = None) -> ChaosReport:
    """Run ``cfg``'s timeline on ``fleet`` (a Redis broker) and reconcile (module docstring)."""
    schedule = make_schedule(cfg.seed, cfg.seconds, workers=cfg.workers, mean_gap=cfg.mean_gap)
    executor = Executor(fleet, workers=cfg.workers, concurrency=cfg.concurrency, log=log)
    clients = [fleet.client(mode="durable"), fleet.client(mode="buffered")]
    ledger, clock = Ledger(), VersionClock()
    modes = {"durable": _Tee(ledger), "buffered": _Tee(ledger)}
    threads = thread_ids("chaos", cfg.threads)
    total = int(cfg.rate * cfg.seconds)
    streams = [
        Stream(client, modes[client.mode], threads, total, producers=3, rate=cfg.rate, clock=clock)
        for client in clients
    ]
    rng = random.Random(cfg.seed + 1)
    delete_errors: Counter[str] = Counter()

    def delete() -> None:
        tid = rng.choice(threads)
        try:
            result = clients[0].delete_thread(tid)
        except Exception as exc:  # StoreUnavailable while the store is out; judged later
            delete_errors[type(exc).__name__] += 1
        else:
            ledger.deleted(tid, result.current_version)

    watch = VersionWatch(fleet.store, threads)
    loops = [_Loop(delete, cfg.delete_interval, "deleter"), _Loop(watch.observe, 0.5, "watch")]
    t0 = time.monotonic()
    for stream in streams:
        stream.start()
    for loop in loops:
        loop.start()
    executor.run(schedule, t0)
    executor.heal()
    for stream in streams:
        stream.stop()
    harness: list[str] = list(executor.errors)
    for stream in streams:
        try:
            stream.join(120.0)
        except Exception as exc:
            harness.append(f"producers: {type(exc).__name__}: {exc}")
    loops[0].stop()
    settle_seconds, pending, waiting = settle(fleet, ledger, cfg, executor.check_slots)
    loops[1].stop()
    watch.observe()
    entries = read_dead_letters(fleet.store)
    results = {
        mode: reconcile(f"chaos seed {cfg.seed}{suffix}", mode_ledger, fleet.store, entries)
        for mode, suffix, mode_ledger in (
            ("all", "", ledger),
            *((mode, f" {mode}", mode_ledger) for mode, mode_ledger in modes.items()),
        )
    }
    resurrected, failed_stored = find_resurrected(ledger, fleet.store)
    probed = probe_workers(fleet, clients, clock, cfg.probe_timeout)
    depth = broker_depth(fleet)
    notes = executor.describe() + waiting
    if depth != (0, 0) or pending:
        notes.append(f"broker after settling: {broker_notes(fleet)}; pending {pending[:10]}")
    return ChaosReport(
        config=cfg,
        timeline=executor.applied,
        results=results,
        resurrected=resurrected,
        regressions=watch.regressions,
        samples=watch.samples,
        failed_but_stored=failed_stored,
        delete_errors=delete_errors,
        settle_seconds=settle_seconds,
        pending_at_end=pending,
        broker_depth=depth,
        probe=probed,
        workers_running=(executor.workers_running(), cfg.workers),
        crashes=executor.crashes(),
        harness_errors=harness,
        notes=notes,
    )


@contextlib.contextmanager
def open_fleet(directory: Path, **overrides: Any) -> Iterator[Fleet]:
    """A fleet outside pytest: store and broker on private redis-servers (AOF on), workers
    logging into ``directory``; everything is stopped by PID on exit."""
    with RedisServer(appendonly=True) as store_server, RedisServer(appendonly=True) as broker:
        tag = uuid.uuid4().hex[:8]
        fields: dict[str, Any] = {
            "redis_url": store_server.url,
            "broker_url": broker.url,
            "namespace": f"chaos-{tag}",
            "queue": f"chaos-{tag}",
            **FAULT_SETTINGS,
            **overrides,
        }
        settings = Settings(_env_file=None, **fields)

        def start_worker(env: dict[str, str], **kwargs: Any) -> CeleryWorker:
            return CeleryWorker(env, directory=directory, **kwargs).start()

        fleet = Fleet(
            store_server=store_server,
            broker_server=broker,
            settings=settings,
            env=settings_env(**fields),
            store=RedisCheckpointer.from_settings(settings),
            _worker_factory=start_worker,
        )
        try:
            yield fleet
        finally:
            fleet.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.faults.chaos --seed N --minutes M``: exit 1 if an invariant broke."""
    parser = argparse.ArgumentParser(
        prog="scripts/chaos", description="A seeded chaos run over a private fleet."
    )
    parser.add_argument("--seed", type=int, help="default: a random one (printed)")
    parser.add_argument("--minutes", type=float, default=2.0, help="fault window (max 120)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=25.0, help="saves/s per hand-off mode")
    parser.add_argument("--threads", type=int, default=400)
    parser.add_argument("--logs", type=Path, help="worker logs (default: a new temp dir)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 0 < args.rate <= 500 or not 1 <= args.workers <= 8:
        parser.error("--minutes in (0, 120], --rate in (0, 500], --workers in [1, 8]")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    logs = args.logs or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    logs.mkdir(parents=True, exist_ok=True)
    cfg = ChaosConfig(
        seed=seed,
        seconds=args.minutes * 60,
        workers=args.workers,
        rate=args.rate,
        threads=args.threads,
    )
    # The agent side's warnings (retries, failed publishes) go to a file beside the workers'.
    logging.basicConfig(filename=logs / "agents.log", level=logging.INFO)
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(f"chaos: seed {seed}, {args.minutes:g} min; logs in {logs}")
    with open_fleet(logs) as fleet:
        report = run(fleet, cfg, log=lambda line: console.print(line, highlight=False))
    report.render(console)
    return 1 if report.problems() or report.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
