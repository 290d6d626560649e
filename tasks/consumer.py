"""A worker consumer that dead-letters messages Celery cannot even decode or route.

Celery's own consumer logs and acknowledges a message whose content type is not accepted
(pickle, say), whose body does not decode, or whose task is unknown; the message is then
gone. This one first records it in the dead-letter list (raw body included, base64, capped)
so nothing handed off disappears without a trace. It never executes such a message.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from celery.worker.consumer import Consumer

from tasks.deadletter import make_entry

if TYPE_CHECKING:
    from tasks.celery_app import PersistenceApp

__all__ = ["DeadLetterConsumer"]

logger = logging.getLogger("tasks.consumer")

_MAX_BODY = 64 * 1024


class DeadLetterConsumer(Consumer):
    """Celery's consumer, with undecodable, unknown and invalid messages dead-lettered."""

    app: PersistenceApp

    def _record(self, message: Any, reason: str, error: str) -> None:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            headers = {
                k: v for k, v in (message.headers or {}).items() if isinstance(v, (str, int))
            }
            entry = make_entry(
                reason,
                error,
                namespace=self.app.settings.namespace,
                task=headers.get("task"),
                task_id=headers.get("id"),
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                body_base64=base64.b64encode(body[:_MAX_BODY]).decode(),
                body_truncated=len(body) > _MAX_BODY,
            )
            self.app.dead_letters.push(entry)
        except Exception:
            logger.exception("could not dead-letter an undecodable message")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._record(message, f"message could not be decoded: {exc}", type(exc).__name__)
        super().on_decode_error(message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._record(message, f"unknown task: {exc}", type(exc).__name__)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._record(message, f"invalid task message: {exc}", type(exc).__name__)
        super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._record(message, "message is not a task message", "UnknownMessage")
        super().on_unknown_message(body, message)
