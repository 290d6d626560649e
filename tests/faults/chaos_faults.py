"""The fault side of a chaos run: a seeded timeline and the executor that applies it.

:func:`make_schedule` draws the timeline from ``random.Random(seed)``: at exponential gaps
(mean ``mean_gap`` seconds), a target that is not already broken (the store, the broker, a
worker slot) gets a fault — SIGKILL, SIGSTOP or SIGTERM-and-restart of a redis-server;
SIGKILL or SIGSTOP of a worker's whole process group or of one pool child — with an outage
drawn log-uniformly from 0.5-30 s (short ones common, long ones present). A killed worker is
replaced by a new one once its outage ends. The same seed always gives the same timeline;
when each fault really began and healed depends on the machine, and is recorded.

:class:`Executor` applies a timeline to a :class:`~tests.faults.conftest.Fleet` from the
calling thread: workers die with the thread that started them (``PR_SET_PDEATHSIG``), so it
must be a long-lived one (pytest's test thread, a script's main thread). Every signal goes
by PID or process group, through :mod:`tests.support`.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults.conftest import Fleet
from tests.support.celery_worker import CeleryProcessError, CeleryWorker

__all__ = ["ACTIONS", "Applied", "Executor", "Fault", "make_schedule"]

ACTIONS: dict[str, tuple[str, ...]] = {
    "store": ("sigkill", "sigstop", "restart"),
    "broker": ("sigkill", "sigstop", "restart"),
    "worker": ("sigkill", "sigstop", "child-sigkill", "child-sigstop"),
}
MIN_OUTAGE, MAX_OUTAGE = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: ``at`` seconds into the run, ``outage`` seconds until it heals."""

    at: float
    target: str
    action: str
    outage: float


def make_schedule(
    seed: int, seconds: float, *, workers: int = 2, mean_gap: float = 4.0
) -> list[Fault]:
    """The fault timeline of ``seed``: the same seed always gives the same list."""
    rng = random.Random(seed)
    targets = ["store", "broker", *(f"worker-{i}" for i in range(workers))]
    free_at = dict.fromkeys(targets, 0.0)
    faults: list[Fault] = []
    t, end = rng.uniform(2.0, 5.0), seconds - 1.0
    while end - t >= MIN_OUTAGE:
        free = [x for x in targets if free_at[x] <= t]
        if free:
            target = rng.choice(free)
            action = rng.choice(ACTIONS[target.split("-")[0]])
            drawn = math.exp(rng.uniform(math.log(MIN_OUTAGE), math.log(MAX_OUTAGE)))
            outage = 0.0 if action == "child-sigkill" else min(drawn, end - t)
            faults.append(Fault(round(t, 2), target, action, round(outage, 2)))
            free_at[target] = t + outage + 1.0
        t += rng.expovariate(1.0 / mean_gap)
    return faults


@dataclass
class Applied:
    """What the executor did with one fault (seconds from the run's start)."""

    fault: Fault
    began: float | None = None
    healed: float | None = None
    note: str = ""


class Executor:
    """Applies a timeline to a fleet from the calling thread (workers must be started from a
    long-lived thread: they die with the thread that started them)."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        workers: int,
        concurrency: int,
        log: Callable[[str], None] | None = None,
    ) -> None:
        assert fleet.broker_server is not None, "chaos needs a Redis broker"
        self.fleet, self.concurrency, self.log = fleet, concurrency, log
        self.servers = {"store": fleet.store_server, "broker": fleet.broker_server}
        self.down: dict[str, str] = {}  # server target -> action while it is out
        self.slots = [self._start_worker() for _ in range(workers)]
        self.dead: set[int] = set()  # slots killed by us, waiting for their replacement
        self.orphaned: set[int] = set()  # slots whose worker exited on its own
        self.stopped_child: dict[int, int] = {}
        self.unexpected: list[str] = []  # exits we did not cause, with their time
        self.killed: set[str] = set()  # workers we SIGKILLed
        self.errors: list[str] = []
        self.applied: list[Applied] = []
        self.t0 = time.monotonic()

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def _start_worker(self) -> CeleryWorker:
        for attempt in range(3):
            try:
                return self.fleet.worker(concurrency=self.concurrency)
            except CeleryProcessError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def run(self, schedule: list[Fault], t0: float) -> None:
        """Apply every fault at its time and heal it after its outage."""
        self.t0 = t0
        events: list[tuple[float, int, bool, Applied]] = []
        for n, fault in enumerate(schedule):
            applied = Applied(fault)
            self.applied.append(applied)
            heapq.heappush(events, (fault.at, n, False, applied))
        seq = len(schedule)
        while events:
            due, _, heal, applied = heapq.heappop(events)
            time.sleep(max(0.0, t0 + due - time.monotonic()))
            self.check_slots()
            try:
                done = self._heal(applied) if heal else self._begin(applied)
            except Exception as exc:  # recorded: the run goes on and reports it
                self.errors.append(f"{applied.fault}: {type(exc).__name__}: {exc}")
                done = True
            if not heal and applied.began is not None:
                seq += 1
                heapq.heappush(events, (due + applied.fault.outage, seq, True, applied))
            elif heal and not done:  # a worker cannot become ready while the broker is out
                seq += 1
                heapq.heappush(events, (self._now() + 0.5, seq, True, applied))
            if self.log is not None and (not heal or done):
                self.log(
                    f"{self._now():7.1f}s {'healed' if heal else 'fault '} "
                    f"{applied.fault.target} {applied.fault.action} {applied.note}"
                )

    def _begin(self, applied: Applied) -> bool:
        target, action = applied.fault.target, applied.fault.action
        if target in self.servers:
            server = self.servers[target]
            {"sigkill": server.kill, "sigstop": server.pause, "restart": server.stop}[action]()
            self.down[target] = action
        else:
            slot = int(target.split("-")[1])
            if slot in self.dead or slot in self.orphaned:
                applied.note = "slot down: skipped"
                return True
            worker = self.slots[slot]
            if action == "sigkill":
                worker.kill_group()
                self.killed.add(worker.name)
                self.dead.add(slot)
            elif action == "sigstop":
                worker.pause()
            else:
                children = worker.child_pids()
                if not children:
                    applied.note = "no pool child: skipped"
                    return True
                os.kill(
                    children[0], signal.SIGKILL if action == "child-sigkill" else signal.SIGSTOP
                )
                applied.note = f"child {children[0]}"
                if action == "child-sigstop":
                    self.stopped_child[slot] = children[0]
        applied.began = self._now()
        return True

    def _heal(self, applied: Applied) -> bool:
        target, action = applied.fault.target, applied.fault.action
        if target in self.servers:
            self._heal_server(target)
        else:
            slot = int(target.split("-")[1])
            if action == "sigkill" and slot in self.dead:
                if self.down.get("broker"):
                    return False
                self.slots[slot] = self._start_worker()
                self.dead.discard(slot)
            elif action == "sigstop":
                self.slots[slot].resume()
            elif action == "child-sigstop":
                self._resume_child(slot)
        applied.healed = self._now()
        return True

    def _heal_server(self, target: str) -> None:
        server, action = self.servers[target], self.down.pop(target, None)
        if action == "sigstop":
            server.resume()
        elif action is not None:
            for attempt in range(3):
                try:
                    server.start()
                    break
                except Exception:
                    if attempt == 2:
                        raise
                    time.sleep(1.0)

    def _resume_child(self, slot: int) -> None:
        pid = self.stopped_child.pop(slot, None)
        if pid is not None and pid in self.slots[slot].group_pids():
            os.kill(pid, signal.SIGCONT)

    def check_slots(self) -> None:
        """Note workers that exited on their own and replace them (as a supervisor would)
        once the broker is there to make them ready."""
        for slot, worker in enumerate(self.slots):
            if slot in self.dead or slot in self.orphaned or worker.running:
                continue
            code = worker.wait(timeout=10.0)
            self.unexpected.append(f"{worker.name} (slot {slot}) exited {code} at {self._now()}s")
            self.orphaned.add(slot)
        for slot in sorted(self.orphaned):
            if not self.down.get("broker"):
                self.slots[slot] = self._start_worker()
                self.orphaned.discard(slot)

    def heal(self) -> None:
        """Bring every server back, resume what is stopped, replace what is dead."""
        for target in list(self.down):
            self._heal_server(target)
        for slot in list(self.stopped_child):
            self._resume_child(slot)
        self.check_slots()
        for slot, worker in enumerate(self.slots):
            if slot in self.dead:
                self.slots[slot] = self._start_worker()
                self.dead.discard(slot)
            else:
                worker.resume()  # SIGCONT is harmless to a running group

    def workers_running(self) -> int:
        """Worker slots whose main process runs and is not stopped."""
        return sum(1 for w in self.slots if w.running and process_state(w.pid) not in "TtZX")

    def describe(self) -> list[str]:
        """Each slot's worker (pid, process state, pool) and the exits we did not cause."""
        lines = []
        for slot, w in enumerate(self.slots):
            state = process_state(w.pid) if w.running else f"exited {w.returncode}"
            lines.append(f"slot {slot}: {w.name} pid {w.pid} state {state} pool {w.child_pids()}")
        return lines + self.unexpected

    def crashes(self) -> list[str]:
        """Workers that died without our SIGKILL, each with its fatal log line if any."""
        out = []
        for w in self.fleet.workers:
            fatal = [line for line in w.log_text().splitlines() if "Unrecoverable error" in line]
            if fatal:
                out.append(f"{w.name}: {fatal[0][:300]}")
            elif w.name not in self.killed and not w.running:
                out.append(f"{w.name}: exited {w.returncode} without a fatal log line")
        return out


def process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rindex(")") + 2]
