"""Reconciling a stream of hand-offs against the store after a fault.

Producers record every hand-off in a :class:`Ledger`: the thread, the version, and whether
``save_state`` returned (handed off) or raised (failed to the caller, with the error type).
Deletes are recorded with the tombstone version they left. After the fault and the recovery,
:func:`reconcile` reads what the store holds (one ``stored_versions`` round trip per chunk,
then ``load_checkpoint`` for the threads still live) and the dead-letter list, and puts every
save in exactly one class, the first that applies:

``failed``
    the caller was told: ``save_state`` raised a typed :class:`PersistenceError`;
``durable``
    the store holds the thread at this very version, with this save's content;
``dead_lettered``
    the namespace's dead-letter list holds this very save (thread and version, alone or
    in a batch entry): not lost, but an operator must look at it, so it is reported;
``superseded``
    the store holds a newer version (a later save, or a delete's tombstone);
``lost``
    anything else: an older version is held, nothing is held, or the content at this
    version is not what was handed off. Must be 0.

Deleted threads are checked once more: unless a save newer than the tombstone was handed off,
the thread must not load and must not be listed (``resurrected`` counts those; must be 0).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents_persistence import AgentStateSnapshot, BaseCheckpointer, PersistenceError
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters

__all__ = [
    "RESULTS_DIR",
    "Ledger",
    "Reconciliation",
    "dead_lettered_saves",
    "read_dead_letters",
    "reconcile",
    "snapshot_for",
    "version_of",
    "write_result",
]

#: The length a reader asks the dead-letter list for: more than any test writes.
_READ_CAP = 10_000_000
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
    dead_lettered: int = 0
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
            f"superseded={self.superseded} dead_lettered={self.dead_lettered} "
            f"failed_to_caller={self.failed} lost={self.lost} "
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


def read_dead_letters(store: BaseCheckpointer) -> list[dict[str, Any]]:
    """Every entry of ``store``'s dead-letter list."""
    # The cap only bounds pushes; a reader wants the whole list, however it was capped.
    dead = DeadLetters(store.dead_letter_list(_READ_CAP))
    count = dead.count()
    return dead.list(count) if count else []


def dead_lettered_saves(entries: Iterable[Mapping[str, Any]]) -> set[tuple[str, int]]:
    """(thread, version) of every save in dead-letter ``entries``: single saves, each entry
    of a batch, and arguments kept base64-encoded (``body_base64`` with ``body_escaped``)."""
    found: set[tuple[str, int]] = set()
    for entry in entries:
        if entry.get("task") not in (SAVE_TASK, SAVE_BATCH_TASK):
            continue  # a delete, or an undecodable body that names no save
        kwargs = entry.get("kwargs")
        if kwargs is None and entry.get("body_escaped"):
            raw = json.loads(base64.b64decode(entry["body_base64"]))
            kwargs = raw.get("kwargs") if isinstance(raw, dict) else None
        if not isinstance(kwargs, Mapping):
            continue
        batch = kwargs.get("entries")
        for item in batch if isinstance(batch, list) else [kwargs]:
            if not isinstance(item, Mapping):
                continue
            tid, version = item.get("thread_id"), item.get("version")
            if isinstance(tid, str) and isinstance(version, int):
                found.add((tid, version))
    return found


def reconcile(
    fault: str,
    ledger: Ledger,
    store: BaseCheckpointer,
    dead_letters: Iterable[Mapping[str, Any]] | None = None,
) -> Reconciliation:
    """Classify every save of ``ledger`` against what ``store`` holds now.

    ``dead_letters``: the dead-letter entries to look saves up in; default: the store's own
    list (:func:`read_dead_letters`).
    """
    result = Reconciliation(fault, seconds=time.monotonic() - ledger.started)
    entries = read_dead_letters(store) if dead_letters is None else dead_letters
    dead = dead_lettered_saves(entries)
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
        if have == s.version and content.get(s.thread_id) == (s.thread_id, s.version):
            result.durable += 1
        elif (s.thread_id, s.version) in dead:
            result.dead_lettered += 1
        elif have > s.version:
            result.superseded += 1
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
        "| fault | handed off | durable | superseded | dead-lettered | failed to caller | lost "
        "| resurrected | seconds | at |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fault']} | {r['handed_off']} | {r['durable']} | {r['superseded']} "
        f"| {r.get('dead_lettered', 0)} | {r['failed']} | {r['lost']} | {r['resurrected']} "
        f"| {r['seconds']:.1f} | {r['at']} |"
        for r in rows
    ]
    (directory / "summary.md").write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")[:80]
