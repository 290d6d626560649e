"""Reconciling a stream of hand-offs against the store after a fault.

Producers record every hand-off in a :class:`Ledger`: the thread, the version, and whether
``save_state`` returned (handed off) or raised (failed to the caller, with the error type).
Deletes are recorded with the tombstone version they left. After the fault and the recovery,
:func:`reconcile` reads what the store holds (one ``stored_versions`` round trip per chunk,
then ``load_checkpoint`` for the threads still live) and puts every save in exactly one class:

``durable``
    the store holds the thread at this very version, with this save's content;
``superseded``
    the store holds a newer version (a later save, or a delete's tombstone);
``failed``
    the caller was told: ``save_state`` raised a typed :class:`PersistenceError`;
``lost``
    anything else: an older version is held, nothing is held, or the content at this
    version is not what was handed off. Must be 0.

Deleted threads are checked once more: unless a save newer than the tombstone was handed off,
the thread must not load and must not be listed (``resurrected`` counts those; must be 0).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents_persistence import AgentStateSnapshot, BaseCheckpointer, PersistenceError

__all__ = [
    "RESULTS_DIR",
    "Ledger",
    "Reconciliation",
    "reconcile",
    "snapshot_for",
    "version_of",
    "write_result",
]

#: Where every fault test leaves its counts (ignored by git: the directory ignores itself).
RESULTS_DIR = Path(__file__).parent / "results"


def snapshot_for(thread_id: str, version: int, *, pad: int = 0) -> AgentStateSnapshot:
    """A snapshot that names its thread and version (so content can be checked later)."""
    return AgentStateSnapshot(
        files={"state.txt": f"{thread_id}@{version}" + "x" * pad},
        scratchpad={"thread": thread_id, "version": version},
    )


def version_of(state: AgentStateSnapshot) -> tuple[object, object]:
    """The (thread, version) a snapshot from :func:`snapshot_for` names."""
    return state.scratchpad.get("thread"), state.scratchpad.get("version")


@dataclass(frozen=True, slots=True)
class _Save:
    thread_id: str
    version: int
    error: str | None  # None: handed off; else the type name of what the caller got


class Ledger:
    """Thread-safe record of every hand-off a test's producers made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._saves: list[_Save] = []
        self._deletes: dict[str, int] = {}
        self.untyped: Counter[str] = Counter()
        self.started = time.monotonic()

    def handed_off(self, thread_id: str, version: int) -> None:
        """``save_state`` returned for this save."""
        with self._lock:
            self._saves.append(_Save(thread_id, version, None))

    def failed(self, thread_id: str, version: int, exc: BaseException) -> None:
        """``save_state`` raised: typed errors count as reported, others as untyped."""
        with self._lock:
            self._saves.append(_Save(thread_id, version, type(exc).__name__))
            if not isinstance(exc, PersistenceError):
                self.untyped[f"{type(exc).__module__}.{type(exc).__name__}"] += 1

    def deleted(self, thread_id: str, tombstone_version: int) -> None:
        """A delete left a tombstone at ``tombstone_version``."""
        with self._lock:
            held = self._deletes.get(thread_id, 0)
            self._deletes[thread_id] = max(held, tombstone_version)

    @property
    def saves(self) -> list[_Save]:
        with self._lock:
            return list(self._saves)

    @property
    def deletes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._deletes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._saves)

    @property
    def ok_count(self) -> int:
        """Saves handed off without an error so far."""
        with self._lock:
            return sum(1 for s in self._saves if s.error is None)

    @property
    def thread_ids(self) -> list[str]:
        with self._lock:
            return sorted({s.thread_id for s in self._saves} | set(self._deletes))


@dataclass
class Reconciliation:
    """The counts of one fault test (see the module docstring)."""

    fault: str
    handed_off: int = 0
    durable: int = 0
    superseded: int = 0
    failed: int = 0
    lost: int = 0
    resurrected: int = 0
    untyped_errors: int = 0
    deletes: int = 0
    stayed_deleted: int = 0
    threads: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        """Every save a producer tried (handed off or failed to the caller)."""
        return self.handed_off + self.failed

    def line(self) -> str:
        """The one-line table row the fault suite prints."""
        extra = "".join(f" {k}={v}" for k, v in sorted(self.extra.items()))
        return (
            f"[{self.fault}] handed_off={self.handed_off} durable={self.durable} "
            f"superseded={self.superseded} failed_to_caller={self.failed} lost={self.lost} "
            f"resurrected={self.resurrected} untyped={self.untyped_errors} "
            f"deletes={self.deletes} stayed_deleted={self.stayed_deleted} "
            f"threads={self.threads} seconds={self.seconds:.1f}{extra}"
        )

    def assert_clean(self) -> None:
        """Nothing lost, nothing resurrected, every failure typed."""
        assert self.lost == 0, f"{self.line()}\nlost: {self.lost_examples}"
        assert self.resurrected == 0, self.line()
        assert self.untyped_errors == 0, self.line()


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def reconcile(fault: str, ledger: Ledger, store: BaseCheckpointer) -> Reconciliation:
    """Classify every save of ``ledger`` against what ``store`` holds now."""
    result = Reconciliation(fault, seconds=time.monotonic() - ledger.started)
    thread_ids = ledger.thread_ids
    held: dict[str, int] = {}
    for chunk in _chunks(thread_ids, 1000):
        held.update(store.stored_versions(list(chunk)))
    deletes = ledger.deletes
    saves = ledger.saves
    newest_ok: dict[str, int] = {}
    for s in saves:
        if s.error is None and s.version > newest_ok.get(s.thread_id, 0):
            newest_ok[s.thread_id] = s.version
    # What each live thread holds, read once: the content must match the save at that version.
    content: dict[str, tuple[object, object] | None] = {}
    for tid in thread_ids:
        checkpoint = store.load_checkpoint(tid)
        content[tid] = None if checkpoint is None else version_of(checkpoint.state)
    for s in saves:
        have = held.get(s.thread_id, 0)
        if s.error is not None:
            result.failed += 1
            continue
        result.handed_off += 1
        if have > s.version:
            result.superseded += 1
        elif have == s.version and content.get(s.thread_id) == (s.thread_id, s.version):
            result.durable += 1
        else:
            result.lost += 1
            if len(result.lost_examples) < 10:
                result.lost_examples.append(
                    f"{s.thread_id}@{s.version}: store holds {have}, "
                    f"content {content.get(s.thread_id)}"
                )
    listed = set(store.list_threads()) if deletes else set()
    for tid, tomb in deletes.items():
        if newest_ok.get(tid, 0) > tomb:
            continue  # saved again after the delete: it may live
        if content.get(tid) is not None or tid in listed or held.get(tid, 0) < tomb:
            result.resurrected += 1
        else:
            result.stayed_deleted += 1
    result.deletes = len(deletes)
    result.threads = len(thread_ids)
    result.untyped_errors = sum(ledger.untyped.values())
    if ledger.untyped:
        result.extra["untyped_kinds"] = ",".join(sorted(ledger.untyped))
    return result


def write_result(result: Reconciliation, directory: Path = RESULTS_DIR) -> Path:
    """Write ``result`` to ``<directory>/<fault>.json`` and rebuild ``summary.md``, a table of
    the latest result of every fault in the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", "utf-8")
    data = asdict(result)
    data["attempted"] = result.attempted
    data["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = directory / f"{_slug(result.fault)}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
    rows = sorted(
        (json.loads(p.read_text("utf-8")) for p in directory.glob("*.json")),
        key=lambda r: str(r["fault"]),
    )
    lines = [
        "| fault | handed off | durable | superseded | failed to caller | lost | resurrected "
        "| seconds | at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fault']} | {r['handed_off']} | {r['durable']} | {r['superseded']} "
        f"| {r['failed']} | {r['lost']} | {r['resurrected']} | {r['seconds']:.1f} | {r['at']} |"
        for r in rows
    ]
    (directory / "summary.md").write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")[:80]
