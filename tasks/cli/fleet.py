"""The demo's simulated agent fleet: agents that hand off a growing state, and the audit.

Each agent is a thread of the demo process. At every step it adds a todo, a file and a few
scratchpad entries to its state and hands the whole snapshot to a
:class:`~agents_persistence.tasks.client.checkpointer.CeleryCheckpointer`, timing only that call.
The audit then reads each
thread back and sorts every snapshot handed off into one of three bins:

persisted
    the store holds exactly this version (and the state matches what the agent sent);
superseded
    the store holds a newer version of the thread (saves are versioned: an older snapshot
    is replaced in the hand-off buffer before it is published, or replaced in the store, or
    refused there as stale — never lost);
lost
    the store holds an older version, nothing, or different content. Must be zero.

The summary adds what the client counted on the way: snapshots superseded in its buffer
(buffered mode; never published), and the snapshots and messages the broker accepted. The
end-to-end rate counts published snapshots (what reached the broker and a worker), not
hand-offs that were coalesced in the client.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents_persistence.models import AgentStateSnapshot, TodoItem, TodoStatus
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer

__all__ = [
    "AgentRun",
    "Audit",
    "GrowingState",
    "Traffic",
    "audit",
    "metric_rows",
    "percentile",
    "run_fleet",
]

_NOTE = (
    "Observed the repository layout, ran the failing test, and narrowed the fault to the "
    "retry wrapper; next: reproduce with a paused server and check the backoff bound. "
)


class GrowingState:
    """One agent's state, grown in place step by step (as an agent would), cheaply.

    ``step()`` returns a snapshot of the whole state that does not change afterwards.
    """

    def __init__(self, agent: int) -> None:
        self.agent = agent
        self.step_no = -1
        self.todos: list[TodoItem] = []
        self.files: dict[str, str] = {}

    def step(self) -> AgentStateSnapshot:
        """Advance one step: finish the current todo, start the next, write a file."""
        n = self.step_no = self.step_no + 1
        if self.todos:
            self.todos.pop()  # the pending "plan" item
            self.todos[-1] = TodoItem(content=self.todos[-1].content, status=TodoStatus.COMPLETED)
        self.todos.append(
            TodoItem(content=f"step {n}: inspect, edit, test", status=TodoStatus.IN_PROGRESS)
        )
        self.todos.append(TodoItem.pending(f"step {n + 1}: plan"))
        self.files[f"notes/step-{n:03d}.md"] = f"# step {n} of agent {self.agent}\n{_NOTE}"
        # Built from validated parts, so constructing it again would only cost time.
        return AgentStateSnapshot.model_construct(
            todos=list(self.todos),
            files=dict(self.files),
            scratchpad={
                "agent": self.agent,
                "step": n,
                "tokens_used": 1_200 * (n + 1),
                "last_tool": ["read_file", "run_tests", "edit_file"][n % 3],
                "history": {"steps": n + 1, "files": len(self.files)},
            },
            pending_interrupts=[],
        )


@dataclass
class AgentRun:
    """What one agent handed off: its versions in order, its last state, its latencies."""

    thread_id: str
    versions: list[int] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    final_bytes: int = 0
    last_state: AgentStateSnapshot | None = None
    error: BaseException | None = None


def _agent(
    client: CeleryCheckpointer,
    run: AgentRun,
    *,
    index: int,
    steps: int,
    think_s: float,
    stop: threading.Event,
    advance: Callable[[], None],
) -> None:
    try:
        grower = GrowingState(index)
        for _ in range(steps):
            if stop.is_set():
                return
            state = grower.step()
            t0 = time.perf_counter_ns()
            handle = client.save_state(run.thread_id, state)
            run.latencies_ns.append(time.perf_counter_ns() - t0)
            run.versions.append(handle.version)
            run.last_state = state
            advance()
            if think_s:
                time.sleep(think_s)
    except BaseException as exc:  # reported by the demo, which stops the others
        run.error = exc
        stop.set()


def run_fleet(
    client: CeleryCheckpointer,
    thread_ids: Sequence[str],
    steps: int,
    *,
    think_s: float = 0.0,
    advance: Callable[[], None] = lambda: None,
) -> list[AgentRun]:
    """Run one agent thread per id for ``steps`` steps each; returns when all are done.

    A KeyboardInterrupt while waiting stops every agent at its next step, then propagates.
    """
    runs = [AgentRun(tid) for tid in thread_ids]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_agent,
            args=(client, run),
            kwargs={
                "index": i,
                "steps": steps,
                "think_s": think_s,
                "stop": stop,
                "advance": advance,
            },
            name=f"agent-{i}",
            daemon=True,
        )
        for i, run in enumerate(runs)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    finally:
        stop.set()
    for run in runs:
        if run.last_state is not None:
            run.final_bytes = len(run.last_state.model_dump_json())
    return runs


@dataclass
class Audit:
    """The fleet's snapshots, sorted into persisted / superseded / lost."""

    handed_off: int = 0
    persisted: int = 0
    superseded: int = 0
    lost: int = 0
    lost_threads: list[str] = field(default_factory=list)


def audit(client: CeleryCheckpointer, runs: Sequence[AgentRun]) -> Audit:
    """Load every thread back and sort each snapshot handed off (see the module docstring)."""
    result = Audit()
    for run in runs:
        if not run.versions:
            continue
        checkpoint = client.load_checkpoint(run.thread_id)
        held = 0 if checkpoint is None else checkpoint.version
        same = checkpoint is not None and checkpoint.state == run.last_state
        result.handed_off += len(run.versions)
        for version in run.versions:
            if held > version:
                result.superseded += 1
            elif held == version and same:
                result.persisted += 1
            else:
                result.lost += 1
                if run.thread_id not in result.lost_threads:
                    result.lost_threads.append(run.thread_id)
    return result


def percentile(values_ns: Sequence[int], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values_ns``, in microseconds."""
    if not values_ns:
        return 0.0
    ordered = sorted(values_ns)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1] / 1000


@dataclass(frozen=True)
class Traffic:
    """What the client counted: snapshots superseded in its buffer (never published), and
    the snapshots and messages the broker accepted (re-sends included)."""

    superseded_in_buffer: int
    published_snapshots: int
    published_messages: int

    @classmethod
    def of(cls, client: CeleryCheckpointer) -> Traffic:
        """The counters of ``client`` now."""
        return cls(client.superseded, client.published_snapshots, client.published_messages)

    def since(self, earlier: Traffic) -> Traffic:
        """What was counted after ``earlier`` (leaves out a probe save, say)."""
        return Traffic(
            self.superseded_in_buffer - earlier.superseded_in_buffer,
            self.published_snapshots - earlier.published_snapshots,
            self.published_messages - earlier.published_messages,
        )


def metric_rows(
    runs: Sequence[AgentRun], result: Audit, *, traffic: Traffic, times: Sequence[float]
) -> list[tuple[str, str]]:
    """The audit and timings as (metric, value) rows; ``times``: start, handed, durable.

    The rate counts published snapshots (those that reached the broker), from the first
    hand-off until ``flush()`` saw every thread durable.
    """
    t0, t_handed, t_durable = times
    latencies = [ns for run in runs for ns in run.latencies_ns]
    final = [run.final_bytes for run in runs if run.final_bytes]
    rate = traffic.published_snapshots / max(t_durable - t0, 1e-9)
    return [
        ("handed off", f"{result.handed_off}"),
        ("superseded in buffer", f"{traffic.superseded_in_buffer}"),
        (
            "published (messages)",
            f"{traffic.published_snapshots} ({traffic.published_messages})",
        ),
        ("persisted", f"{result.persisted}"),
        ("superseded", f"{result.superseded}"),
        ("lost", f"{result.lost}"),
        ("hand-off p50", f"{percentile(latencies, 50):,.0f} µs"),
        ("hand-off p99", f"{percentile(latencies, 99):,.0f} µs"),
        ("hand-off phase", f"{t_handed - t0:.2f} s"),
        ("flush (until durable)", f"{t_durable - t_handed:.2f} s"),
        ("end-to-end rate", f"{rate:,.0f} published snapshots/s"),
        ("final snapshot (mean)", f"{sum(final) / max(len(final), 1) / 1024:.1f} KiB"),
    ]
