"""What RabbitMQ holds, read over AMQP alone (no management API needed).

``queue_type_on_broker(url, queue)`` -> ``"classic"`` | ``"quorum"`` | ...: RabbitMQ answers a
declaration that differs from the existing queue with ``PRECONDITION_FAILED - inequivalent
arg 'x-queue-type' ... received 'stream' but current is 'quorum'`` (``current is none`` for a
classic queue declared without the argument), so the probe declares the queue as a stream on
a throw-away channel and reads the type from the refusal; a passive declaration first makes
sure nothing is created.

``delayed_messages(url)``: messages waiting in Celery's native delayed delivery queues
(``celery_delayed_0`` .. ``celery_delayed_27``; those that do not exist count 0).
"""

from __future__ import annotations

import re
from typing import Any

from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

__all__ = ["delayed_messages", "queue_type_on_broker", "ready_messages"]

_CURRENT = re.compile(r"current is (?:the value )?'([a-z]+)'")


def queue_type_on_broker(url: str, queue: str) -> str:
    """The type of the existing ``queue`` (NotFound if there is none)."""
    with Connection(url, connect_timeout=5) as conn:
        probe: Any = conn.default_channel
        probe.queue_declare(queue, passive=True)
        channel: Any = conn.channel()
        try:
            channel.queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": "stream"}
            )
        except PreconditionFailed as exc:
            text = str(exc.reply_text)
            if "current is none" in text:
                return "classic"
            found = _CURRENT.search(text)
            if found is None:
                raise
            return found.group(1)
        return "stream"


def ready_messages(url: str, *queues: str) -> int:
    """Messages ready in ``queues`` (one that does not exist counts 0)."""
    total = 0
    with Connection(url, connect_timeout=5) as conn:
        for queue in queues:
            channel: Any = conn.channel()  # a refusal closes it
            try:
                _, ready, _ = channel.queue_declare(queue, passive=True)
            except NotFound:
                continue
            total += int(ready)
            channel.close()
    return total


def delayed_messages(url: str) -> int:
    """Messages waiting in Celery's native delayed delivery queues."""
    return ready_messages(url, *(level_name(level) for level in range(MAX_LEVEL + 1)))
