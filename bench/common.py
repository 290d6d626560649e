"""What every section shares: payloads, timing, results and the run context."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents_persistence import AgentStateSnapshot, HitlInterrupt, TodoItem, TodoStatus

__all__ = [
    "SIZES",
    "Context",
    "Section",
    "Stats",
    "Target",
    "fmt_us",
    "interleaved",
    "label",
    "ratio",
    "snapshot",
]

#: The payload sizes the card names: 4 KB, 64 KB, 1 MB of snapshot JSON.
SIZES = (4 * 1024, 64 * 1024, 1024 * 1024)

_WORDS = [
    "agent",
    "tool",
    "call",
    "result",
    "file",
    "read",
    "write",
    "plan",
    "step",
    "todo",
    "check",
    "memory",
    "vector",
    "search",
    "query",
    "answer",
    "user",
    "model",
    "token",
    "stream",
    "retry",
    "index",
    "thread",
    "state",
    "save",
    "load",
    "def",
    "return",
    "import",
    "class",
    "self",
    "value",
    "error",
    "async",
    "await",
    "list",
    "dict",
    "None",
    "True",
    "False",
    "for",
    "while",
    "if",
    "else",
]


def label(size: int) -> str:
    """``4 KB``, ``64 KB``, ``1 MB``."""
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


def _text(rng: random.Random, n: int) -> str:
    out: list[str] = []
    size = 0
    while size < n:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n]


def snapshot(size: int, seed: int = 0) -> AgentStateSnapshot:
    """An agent state whose JSON is about ``size`` bytes: todos, files of code-like text,
    a small scratchpad and one pending interrupt (compresses ~4x with zlib, like source)."""
    rng = random.Random(seed)
    files = max(1, min(32, size // 2048))
    per_file = max(16, (size - 700) // files - 24)
    return AgentStateSnapshot(
        todos=[TodoItem(content=_text(rng, 40), status=TodoStatus.IN_PROGRESS) for _ in range(4)],
        files={f"src/module_{i}.py": _text(rng, per_file) for i in range(files)},
        scratchpad={"step": 12, "notes": [_text(rng, 30) for _ in range(3)], "t": 0.5},
        pending_interrupts=[
            HitlInterrupt(tool_name="shell", tool_args={"cmd": "rm -r build"}, call_id="c1")
        ],
    )


@dataclass(frozen=True)
class Stats:
    """Latency of one variant, in microseconds."""

    n: int
    p50_us: float
    p99_us: float
    mean_us: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Stats:
        s = sorted(samples_ns)
        n = len(s)
        return cls(
            n,
            s[n // 2] / 1000,
            s[min(n - 1, int(n * 0.99))] / 1000,
            sum(s) / n / 1000,
        )


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    n: int,
    *,
    rounds: int = 5,
    warmup: int = 20,
    after_round: Mapping[str, Callable[[], object]] | None = None,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Stats]:
    """Time every variant ``n`` times, split over ``rounds`` interleaved rounds.

    Interleaving spreads drift (other load on the machine, caches, Redis memory growth)
    over all variants alike, so their ratios stay honest on a shared machine.
    """
    samples: dict[str, list[int]] = {name: [] for name in variants}
    per_round = max(1, n // rounds)
    after = after_round or {}
    perf = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(warmup):
                fn()
            got = samples[name]
            for _ in range(per_round):
                t0 = perf()
                fn()
                got.append(perf() - t0)
            if name in after:
                after[name]()
            if tick is not None:
                tick(per_round)
    return {name: Stats.of(v) for name, v in samples.items()}


@dataclass
class Target:
    """One of the card's targets, with the measured figure."""

    name: str
    measured: float
    limit: float
    met: bool
    detail: str


@dataclass
class Section:
    """One section's results: a table (columns + rows), targets and notes."""

    key: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, **row: Any) -> None:
        """Append a row (keys are column names)."""
        self.rows.append(row)

    def target(self, name: str, measured: float, limit: float, detail: str = "") -> None:
        """Record a target as ``measured <= limit``."""
        self.targets.append(Target(name, measured, limit, measured <= limit, detail))


@dataclass
class Context:
    """What a section gets: where Redis and PostgreSQL are, the run's scale, progress."""

    redis_url: str
    private_redis: bool
    quick: bool
    postgres_dsn: str
    start: Callable[[str, int], None]
    advance: Callable[[int], None]

    def scale(self, quick: int, full: int) -> int:
        """``quick`` in --quick mode, else ``full``."""
        return quick if self.quick else full


def fmt_us(us: float) -> str:
    """Microseconds, readable: ``128 µs``, ``1.71 ms``."""
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``0.84x``."""
    return f"{a / b:.2f}x" if b else "-"
