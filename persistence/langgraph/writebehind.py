"""The saver's write-behind mode: hand-offs out, read-your-writes in (see :mod:`.handoff`).

What a crash of the agent process can lose: with the Celery layer's durable hand-off (the
adapter's only mode), ``put`` / ``put_writes`` return once the broker holds the message, so
nothing they returned for is lost: a worker applies it later, even if the agent never comes
back. Lost are only the calls that had not returned (LangGraph then re-runs that step from the
last checkpoint it saw returned) and this process's list of pending hand-offs (so nobody re-sends
a message the broker itself lost after accepting it: the Celery layer's documented window,
kombu's Redis transport losing a message in flight when a worker is SIGKILLed). Other
processes see a hand-off once a worker applied it; this one waits for its own before reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

from agents_persistence.langgraph.driver import SyncDriver
from agents_persistence.langgraph.handoff import CheckpointHandOff, PendingHandOffs, to_wire
from agents_persistence.langgraph.operations import Batch, Op, Operations, target
from agents_persistence.langgraph.overlay import get_tuple_overlaid
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple

__all__ = ["WriteBehind", "as_handoff", "record"]

T = TypeVar("T")

#: Pending hand-offs worth a probe round (forgetting those now durable) at the next hand-off.
_PRUNE_MIN = 64


def record(op: Op[T]) -> tuple[list[Batch], T]:
    """Run a write operation without I/O: its batches and its result (write operations
    never look at their replies)."""
    batches: list[Batch] = []
    try:
        batch = next(op)
        while True:
            batches.append(batch)
            batch = op.send([None] * len(batch.commands))
    except StopIteration as stop:
        result: T = stop.value
        return batches, result


def as_handoff(handoff: object) -> CheckpointHandOff:
    """``handoff`` itself if it has ``send_checkpoint``; a ``CeleryCheckpointer`` wrapped in
    the Celery layer's adapter (imported here, so the core imports no Celery otherwise)."""
    if hasattr(handoff, "send_checkpoint"):
        return cast(CheckpointHandOff, handoff)
    from agents_persistence.tasks.worker.langgraph_tasks import LangGraphHandOff

    return LangGraphHandOff(handoff)  # type: ignore[arg-type]  # a CeleryCheckpointer


class WriteBehind:
    """Hands write batches off and waits for them before reads of their thread.

    Args:
        handoff: where batches go.
        namespace: the saver's store namespace (workers check it is theirs).
        driver: the saver's sync driver (probes and reads).
        timeout: the longest a read waits for this process's pending hand-offs.
    """

    def __init__(
        self, handoff: CheckpointHandOff, namespace: str, driver: SyncDriver, timeout: float
    ) -> None:
        self.handoff = handoff
        self.namespace = namespace
        self.driver = driver
        self.timeout = timeout
        self.pending = PendingHandOffs()
        self._prune_at = _PRUNE_MIN

    def hand_off(self, op: Op[T], thread_id: str, probe: tuple[Any, ...]) -> T:
        """Send ``op``'s batches; remember them until ``probe`` finds them in Redis."""
        batches, result = record(op)
        wire = [to_wire(b) for b in batches]

        def send() -> None:
            self.handoff.send_checkpoint(self.namespace, thread_id, wire)

        send()
        if self.pending.add(thread_id, probe, send, batches) >= self._prune_at:
            self.pending.prune(self._probe)
            self._prune_at = max(_PRUNE_MIN, 2 * len(self.pending.threads()))
        return result

    def get_tuple(self, ops: Operations, config: RunnableConfig) -> CheckpointTuple | None:
        """``get_tuple`` over Redis and this process's pending hand-offs (no waiting)."""
        batches = self.pending.batches(target(config).thread_id)
        if not batches:
            return self.driver.run(ops.get_tuple(config))
        return self.driver.run(get_tuple_overlaid(ops, config, batches))

    def settle(self, thread_ids: Sequence[str] | None, timeout: float | None = None) -> None:
        """Wait until this process's hand-offs of these threads (None: all) are durable."""
        if not self.pending.threads():
            return
        wait = self.timeout if timeout is None else timeout
        self.pending.settle(thread_ids, self._probe, wait)

    def _probe(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        return self.driver.execute(Batch("probe", commands))
