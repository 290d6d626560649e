"""Write-behind: ``put`` and ``put_writes`` handed to the worker fleet instead of Redis.

The saver builds the same :class:`~.operations.Batch` es as in direct mode and hands them,
as JSON (:func:`to_wire`), to a :class:`CheckpointHandOff` (the Celery layer's adapter,
``agents_persistence.tasks.worker.langgraph_tasks.LangGraphHandOff``); a worker's
``agents_persistence.save_checkpoint`` task runs them (:func:`from_wire` then the saver's
driver). Every batch is idempotent and the data model is additive (a checkpoint, blob or write
is added, never changed), so redelivered, retried or reordered messages converge on the same
state. A worker runs only what a saver sends: :func:`from_wire` admits the write commands and
scripts of the saver, on keys of the saver's namespace, and nothing else.

:class:`PendingHandOffs` remembers what this process handed off until it sees it in Redis
(one pipelined probe per round); reads of a thread first wait for its pending hand-offs
(read-your-writes), and hand-offs still missing after ``resend_after`` seconds are sent again
(a broker can lose a message it accepted; a re-send is a duplicate at worst).
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents_persistence.errors import FlushTimeout
from agents_persistence.langgraph.keys import SaverKeys
from agents_persistence.langgraph.operations import Batch
from agents_persistence.langgraph.scripts import saver_script

__all__ = ["CheckpointHandOff", "PendingHandOffs", "from_wire", "to_wire"]

#: Commands a handed-off batch may hold, and which arguments are keys (EVALSHA: numkeys).
_WRITE_COMMANDS = {b"HSET": 1, b"ZADD": 1, b"SADD": 1, b"PEXPIRE": 1, b"EVALSHA": -1}
_SCRIPTS = ("put_writes", "touch")


class CheckpointHandOff(Protocol):
    """Where write-behind sends batches (``LangGraphHandOff`` wraps a CeleryCheckpointer)."""

    def send_checkpoint(
        self, namespace: str, thread_id: str, batches: list[dict[str, Any]]
    ) -> None:
        """Hand the batches to the worker fleet; returns once the broker holds them.

        Raises:
            HandOffError: the broker did not take them.
        """


def _arg(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return base64.b64encode(str(value).encode("utf-8")).decode("ascii")


def to_wire(batch: Batch) -> dict[str, Any]:
    """A JSON-safe form of a batch (every argument as base64 bytes)."""
    return {
        "what": batch.what,
        "transaction": batch.transaction,
        "commands": [[_arg(a) for a in command] for command in batch.commands],
    }


def from_wire(wire: object, keys: SaverKeys) -> Batch:
    """Decode and check a handed-off batch.

    Raises:
        ValueError: not a batch, a command or script a saver's write never sends, or a key
            outside the saver's namespace.
    """
    if not isinstance(wire, dict) or not isinstance(wire.get("commands"), list):
        raise ValueError("a handed-off batch is a dict with a list of commands")
    shas = {saver_script(name).sha.encode() for name in _SCRIPTS}
    base = keys.base.encode()
    commands: list[tuple[Any, ...]] = []
    for raw in wire["commands"]:
        if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
            raise ValueError("a command is a non-empty list of base64 strings")
        try:
            args = [base64.b64decode(a, validate=True) for a in raw]
        except ValueError as exc:
            raise ValueError(f"a command argument is not base64: {exc}") from exc
        name = args[0].upper()
        if name not in _WRITE_COMMANDS or len(args) < 3:
            raise ValueError(f"command {name[:20]!r} is not one a saver hands off")
        if name == b"EVALSHA":
            if args[1] not in shas or not args[2].isdigit():
                raise ValueError("EVALSHA of a script a saver does not hand off")
            key_args = args[3 : 3 + int(args[2])]
        else:
            key_args = args[1:2]
        if not key_args or not all(k.startswith(base) for k in key_args):
            raise ValueError("a key outside the saver's namespace")
        commands.append(tuple(args))
    return Batch(str(wire.get("what", "handoff")), commands, bool(wire.get("transaction")))


@dataclass
class _Pending:
    probe: tuple[Any, ...]  # a read whose reply is truthy once the hand-off is in Redis
    resend: Callable[[], None]
    batches: list[Batch]
    sent_at: float = field(default_factory=time.monotonic)


class PendingHandOffs:
    """What this process handed off and has not yet seen in Redis, by thread.

    Args:
        resend_after: seconds after which a hand-off still missing is sent again.
    """

    def __init__(self, resend_after: float = 15.0) -> None:
        self.resend_after = resend_after
        self._lock = threading.Lock()
        self._by_thread: dict[str, list[_Pending]] = {}
        self.resent = 0

    def add(
        self,
        thread_id: str,
        probe: tuple[Any, ...],
        resend: Callable[[], None],
        batches: list[Batch],
    ) -> int:
        """Remember a hand-off (its ``batches``) until ``probe`` answers; returns how many
        hand-offs are pending."""
        with self._lock:
            self._by_thread.setdefault(thread_id, []).append(_Pending(probe, resend, batches))
            return sum(len(items) for items in self._by_thread.values())

    def batches(self, thread_id: str) -> list[Batch]:
        """The batches of a thread's pending hand-offs, oldest first."""
        with self._lock:
            return [b for item in self._by_thread.get(thread_id, []) for b in item.batches]

    def threads(self) -> list[str]:
        """Threads with hand-offs not yet seen durable."""
        with self._lock:
            return [t for t, items in self._by_thread.items() if items]

    def prune(self, probe: Callable[[list[tuple[Any, ...]]], list[Any]]) -> None:
        """One probe round: forget the hand-offs now durable (never waits, never raises)."""
        with contextlib.suppress(FlushTimeout):
            self.settle(None, probe, 0.0)

    def settle(
        self,
        thread_ids: Sequence[str] | None,
        probe: Callable[[list[tuple[Any, ...]]], list[Any]],
        timeout: float | None,
    ) -> None:
        """Block until every hand-off of these threads (None: all) is durable.

        ``probe`` runs the probes in one round trip. Waits back off from 2 ms to 100 ms.

        Raises:
            FlushTimeout: naming the threads still pending after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            with self._lock:
                wanted = [(t, p) for t, items in self._by_thread.items()
                          if thread_ids is None or t in thread_ids for p in items]  # fmt: skip
            if not wanted:
                return
            replies = probe([p.probe for _, p in wanted])
            now = time.monotonic()
            with self._lock:
                for (thread_id, item), reply in zip(wanted, replies, strict=True):
                    if reply:
                        items = self._by_thread.get(thread_id, [])
                        if item in items:
                            items.remove(item)
                        if not items:
                            self._by_thread.pop(thread_id, None)
            overdue = [p for (_, p), r in zip(wanted, replies, strict=True)
                       if not r and now - p.sent_at > self.resend_after]  # fmt: skip
            for item in overdue:
                item.resend()
                item.sent_at = now
                self.resent += 1
            if all(replies):
                continue
            if deadline is not None and now > deadline:
                left = sorted({(t, 0) for (t, _), r in zip(wanted, replies, strict=True) if not r})
                raise FlushTimeout(left, timeout)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
