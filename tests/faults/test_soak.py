"""The bounded soak: about 60 s of hand-offs from several producers into one worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.conftest import FleetFactory, Report
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger
from tests.support.celery_worker import CeleryWorker

SECONDS = 60
RATE = 150.0
#: The worker (main process and its two pool children) must stay below this, in MiB.
PEAK_RSS_LIMIT_MIB = 300


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the worker's total resident memory (main process + pool) twice a second."""

    def __init__(self, worker: CeleryWorker) -> None:
        self.worker = worker
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        return sum(_rss_kib(p) for p in [self.worker.pid, *self.worker.child_pids()])

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic() - began, self._total()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak_mib(self) -> float:
        """Peak of the sampled totals, or of the per-process high-water marks if higher."""
        hwm = sum(_rss_kib(p, "VmHWM") for p in [self.worker.pid, *self.worker.child_pids()])
        return max([hwm, *(kib for _, kib in self.samples)]) / 1024

    def mean_mib(self, start: float, end: float) -> float:
        window = [kib for t, kib in self.samples if start <= t < end]
        return sum(window) / max(1, len(window)) / 1024


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_soak(fleet_factory: FleetFactory, report: Report) -> None:
    """Soak: 4 producers hand off 150 saves/s for 60 s over 3,000 threads to one worker
    (2 pool processes). Reconciled like every fault; the worker's memory is sampled and
    must stay bounded (no growth from the first to the last quarter beyond 25 %)."""
    fleet = fleet_factory(broker="redis")
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    ledger = Ledger()
    total = int(SECONDS * RATE)
    stream = Stream(client, ledger, thread_ids("soak", 3000), total=total, producers=4,
                    rate=RATE, pad=512)  # fmt: skip
    with RssSampler(worker) as rss:
        began = time.monotonic()
        stream.start()
        stream.join(SECONDS + 60)
        handoff_s = time.monotonic() - began
        recovery = fleet.settle(client, timeout=120)
        elapsed = time.monotonic() - began
    applied = worker.task_count("agents_persistence.save_state")
    early = rss.mean_mib(5, SECONDS / 4)
    late = rss.mean_mib(SECONDS * 3 / 4, SECONDS)
    result = report(
        "soak ~60 s, one worker", ledger, fleet,
        handoffs_per_s=round(total / handoff_s), applied_per_s=round(applied / elapsed),
        worker_peak_rss_mib=round(rss.peak_mib(), 1), rss_early_mib=round(early, 1),
        rss_late_mib=round(late, 1), settle_s=round(recovery, 1),
    )  # fmt: skip
    result.assert_clean()
    assert result.handed_off == total
    assert rss.peak_mib() < PEAK_RSS_LIMIT_MIB
    assert late < early * 1.25, f"worker memory grew from {early:.0f} to {late:.0f} MiB"
    assert fleet.broker_depth() == (0, 0)
