"""The LangGraph saver's write-behind on the Celery layer: the worker task and the agent-side
adapter that hands batches to it.

``agents_persistence.save_checkpoint(namespace, thread_id, batches)`` runs batches a
``RedisCheckpointSaver(..., handoff=...)`` handed off (checked by
:func:`agents_persistence.langgraph.handoff.from_wire`: only the saver's own writes, on keys
of the worker's namespace). Batches are idempotent, so the layer's usual exits apply: an
unavailable store retries, then dead-letters; a refused message is dead-lettered at once.

The task needs the ``[langgraph]`` extra only when it runs: registering it imports nothing of
LangGraph (``register_langgraph_tasks``; ``handlers.register_tasks`` calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents_persistence.errors import HandOffError, InvalidInput, StoreUnavailable
from agents_persistence.tasks.client.sender import TaskSender
from agents_persistence.tasks.protocol.names import SAVE_CHECKPOINT_TASK
from agents_persistence.tasks.worker.handlers import PersistenceTask, guarded
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from kombu.serialization import dumps, loads

if TYPE_CHECKING:
    from agents_persistence.langgraph import RedisCheckpointSaver
    from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["SAVE_CHECKPOINT_TASK", "LangGraphHandOff", "register_langgraph_tasks"]


_BROKER_ERRORS = (OperationalError, ConnectionError, OSError, TimeoutError)
#: One saver per worker process and app (its connection pool is reused by every task).
_SAVERS: dict[int, RedisCheckpointSaver] = {}


def _saver(app: PersistenceApp) -> RedisCheckpointSaver:
    saver = _SAVERS.get(id(app))
    if saver is None:
        from agents_persistence.langgraph import RedisCheckpointSaver

        saver = _SAVERS[id(app)] = RedisCheckpointSaver.from_settings(app.settings)
    return saver


@guarded
def save_checkpoint(self: PersistenceTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Apply one hand-off of a LangGraph saver (idempotent)."""
    app = self.papp
    try:
        if args or set(kwargs) != {"namespace", "thread_id", "batches"}:
            raise InvalidInput("save_checkpoint takes namespace, thread_id and batches")
        if kwargs["namespace"] != app.settings.namespace:
            raise InvalidInput(f"hand-off for namespace {kwargs['namespace']!r}, not ours")
        batches = kwargs["batches"]
        if not isinstance(batches, list):
            raise InvalidInput("batches must be a list")
        _saver(app).apply_handoff(batches)
    except (InvalidInput, ValueError) as exc:
        self.dead_letter(exc, args, kwargs)
        return {"outcome": "dead_lettered"}
    except (StoreUnavailable, SoftTimeLimitExceeded) as exc:
        self.retry_or_dead_letter(exc, args, kwargs)
        return {"outcome": "dead_lettered"}
    return {"outcome": "written", "batches": len(batches)}


def register_langgraph_tasks(app: PersistenceApp) -> None:
    """Register ``agents_persistence.save_checkpoint`` on ``app``."""
    app.task(name=SAVE_CHECKPOINT_TASK, base=PersistenceTask, bind=True)(save_checkpoint)


class LangGraphHandOff:
    """Hands a saver's batches to the workers through a ``CeleryCheckpointer``'s app, queue
    and publish bounds (durable: ``send_checkpoint`` returns once the broker holds them).

    Raises (``send_checkpoint``):
        HandOffError: the broker did not accept the message within the publish retries.
    """

    def __init__(self, client: CeleryCheckpointer) -> None:
        settings = client.settings
        self.app = client.app
        self._eager = bool(self.app.conf.task_always_eager)
        # The bounds CeleryCheckpointer publishes with (its own policy is private).
        policy = {
            "max_retries": settings.publish_max_retries,
            "interval_start": 0.05,
            "interval_step": 0.2,
            "interval_max": 1.0,
        }
        self._sender = TaskSender(
            self.app, settings.queue, policy, settings.publish_timeout_seconds
        )
        self._retries = settings.publish_max_retries

    def send_checkpoint(
        self, namespace: str, thread_id: str, batches: list[dict[str, Any]]
    ) -> None:
        """Publish one ``save_checkpoint`` message."""
        kwargs = {"namespace": namespace, "thread_id": thread_id, "batches": batches}
        if self._eager:  # the JSON round trip a broker imposes, then the task inline
            content_type, encoding, data = dumps(kwargs, serializer="json")
            wire = loads(data, content_type, encoding, accept={"application/json"})
            self.app.tasks[SAVE_CHECKPOINT_TASK].apply(kwargs=wire, throw=True)
            return
        size = sum(len(a) for b in batches for c in b["commands"] for a in c)
        kwargsrepr = (
            f"{{'namespace': {namespace!r}, 'thread_id': {thread_id!r}, "
            f"'batches': <{len(batches)} batches, {size} bytes of base64>}}"
        )
        try:
            self._sender.send(SAVE_CHECKPOINT_TASK, kwargs, kwargsrepr[:1024])
        except _BROKER_ERRORS as exc:
            raise HandOffError(
                f"broker did not accept a LangGraph checkpoint after {self._retries} retries: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
