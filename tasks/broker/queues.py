"""The hand-off queue on RabbitMQ: classic (Celery's default) or quorum (``queue_type``).

A **classic** queue is what Celery declares by itself: the queue, a direct exchange of the
same name, hand-offs published through the default exchange. Nothing here changes it.

A **quorum** queue (``Settings.queue_type = "quorum"``) is replicated over the nodes of a
RabbitMQ cluster (Raft): a message the broker confirmed survives the loss of a minority of
them. The layer declares it as:

- ``x-queue-type: quorum``, durable;
- ``x-delivery-limit`` of :data:`QUORUM_DELIVERY_LIMIT` (2**31 - 1, in effect no limit): the
  layer already settles every message it can (stored, duplicate, stale or dead-lettered in
  Redis with its reason); a message only goes back to the queue without an outcome (store
  down past every retry, worker killed), and a broker-side limit would then drop it, since
  the queue has no dead-letter exchange. RabbitMQ 4 gives quorum queues a limit of 20 by
  default; the explicit argument keeps a long outage from losing hand-offs there;
- bound to a topic exchange ``<queue>.quorum`` with a dot-free routing key of its own
  (:func:`routing_key_for`): Celery's retries with a countdown then wait in the broker
  (native delayed delivery: ``celery_delayed_0..27`` quorum queues, ``celery_delayed_delivery``
  exchange, declared by every quorum worker at start) instead of inside a worker, which
  quorum queues could not prefetch around (no global QoS: ``worker_detect_quorum_queues``
  keeps the prefetch per consumer and static). A routing key of one word means a delayed
  message's key (``<28 bits>.<word>``) matches only the bindings of this queue, never those
  of another queue whose name ends like this one's.

A queue keeps the type it was created with: declaring an existing classic queue as quorum
(or the other way round) fails with ``PRECONDITION_FAILED``. :func:`mismatch` recognises that
error, :func:`declare_problem` finds it for ``doctor`` and the worker's start
(:class:`~agents_persistence.errors.BrokerMisconfigured` at hand-off), and
:data:`SWITCH_FIX` says how to switch.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any, Final

from kombu import Exchange, Queue

if TYPE_CHECKING:
    from agents_persistence.config.settings import Settings
    from celery import Celery

__all__ = [
    "QUORUM_DELIVERY_LIMIT",
    "SWITCH_FIX",
    "broker_countdown",
    "celery_queue_options",
    "declare_problem",
    "hand_off_queue",
    "mismatch",
    "routing_key_for",
]

#: ``x-delivery-limit`` of a quorum hand-off queue: in effect none (see the module docstring).
QUORUM_DELIVERY_LIMIT: Final = 2**31 - 1
#: How to resolve a queue declared with another type than the settings ask for.
SWITCH_FIX: Final = (
    "a queue keeps the type and arguments it was created with: use a new queue name "
    "(AGENTS_PERSISTENCE_QUEUE) and keep the old queue's workers until it is empty, or stop "
    "agents and workers, let the queue drain, delete it (rabbitmqctl delete_queue <queue>) "
    "and start again; or set AGENTS_PERSISTENCE_QUEUE_TYPE to the queue's type"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def routing_key_for(queue: str) -> str:
    """The routing key binding a quorum ``queue`` to its exchange: one word (no ``.``,
    ``*`` or ``#``), its name made safe and a digest of the name, so no other queue's
    key matches it as a topic pattern. At most 81 characters: a delayed message's key adds
    56 and stays far below AMQP's 255."""
    digest = hashlib.sha256(queue.encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', queue)[:64]}-{digest}"


def hand_off_queue(settings: Settings) -> Queue:
    """The quorum hand-off queue ``settings`` name, as the layer declares it."""
    name = settings.queue
    return Queue(
        name,
        Exchange(f"{name}.quorum", type="topic", durable=True),
        routing_key=routing_key_for(name),
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
        },
    )


def celery_queue_options(settings: Settings) -> dict[str, Any]:
    """The Celery options of ``settings.queue_type``: none for classic (Celery's own
    declaration), the quorum queue and its delayed delivery otherwise."""
    if settings.queue_type != "quorum":
        return {}
    queue = hand_off_queue(settings)
    return {
        "task_queues": [queue],
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_default_exchange": queue.exchange.name,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": queue.routing_key,
        # No global QoS on quorum queues: Celery keeps a per-consumer, static prefetch.
        "worker_detect_quorum_queues": True,
        # Retries' countdowns wait in replicated queues too.
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def broker_countdown(settings: Settings, countdown: float) -> float:
    """``countdown`` as the queue can carry it. Native delayed delivery (quorum) counts whole
    seconds (Celery truncates) and refuses a countdown below one second (``ValueError`` at
    publish: the retry would not be published at all), so a shorter one waits a second;
    classic queues take it as it is."""
    if settings.queue_type == "quorum" and 0 < countdown < 1:
        return 1.0
    return countdown


def mismatch(exc: BaseException) -> bool:
    """Whether ``exc`` is RabbitMQ refusing a declaration that differs from the existing
    queue or exchange (``PRECONDITION_FAILED - inequivalent arg ...``)."""
    from amqp.exceptions import PreconditionFailed

    return isinstance(exc, PreconditionFailed) and "inequivalent" in str(exc)


def declare_problem(app: Celery, settings: Settings) -> str | None:
    """Declare the hand-off queue (and its exchange) as the settings ask, on a connection
    of its own; return what RabbitMQ refused (None if it took the declaration; the fix is
    :data:`SWITCH_FIX`). Classic queues are declared as Celery does. Other broker errors
    propagate."""
    queue = app.amqp.queues[settings.queue]
    with app.connection_for_write() as conn:
        try:
            queue.bind(conn.default_channel).declare()
        except Exception as exc:
            if not mismatch(exc):
                raise
            return (
                f"RabbitMQ refuses to declare queue {settings.queue} as {settings.queue_type}: "
                f"{getattr(exc, 'reply_text', None) or exc}"
            )
    return None
