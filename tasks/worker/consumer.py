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

from agents_persistence.tasks.worker.dead_letters import make_entry
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError
from vine import promise

if TYPE_CHECKING:
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["DeadLetterConsumer"]

logger = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024


#: Workflow fields of a task message body's third element; the layer never sends them, and
#: honouring them would let a message start other tasks after ours.
_EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def envelope_problem(message: Any) -> str | None:
    """Why a Celery protocol-2 task message is not one the layer could have sent, or None.

    Celery reads some envelope fields in the worker's main process, outside any handler:
    a body that is not ``[args, kwargs, embed]`` or a ``timelimit`` that is not a pair
    raises there and ends the worker (an "Unrecoverable error"), and the message, given
    back, ends the next worker too. So the envelope is checked before Celery sees it.
    Messages whose body cannot be decoded or whose content type is refused are left to
    Celery, which reports them through :meth:`DeadLetterConsumer.on_decode_error` /
    ``on_invalid_task``.
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        try:
            body = message.payload
        except (DecodeError, ContentDisallowed):
            return None
        if isinstance(body, dict) and "task" in body:
            return "task message of protocol 1 (the layer sends protocol 2 only)"
        return None  # not a task message: Celery reports it as unknown
    if not isinstance(headers["task"], str):
        return "header 'task' is not a string"
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "header 'id' is not a non-empty string"
    retries = headers.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        return "header 'retries' is not a non-negative integer"
    for name in ("eta", "expires"):
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"header {name!r} is not an ISO 8601 string"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, (list, tuple))
        and len(limits) == 2
        and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in limits
        )
    ):
        return "header 'timelimit' is not a pair of numbers"
    try:
        body = message.payload
    except (DecodeError, ContentDisallowed):
        return None
    if not (
        isinstance(body, (list, tuple))
        and len(body) == 3
        and isinstance(body[0], (list, tuple))
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    ):
        return "task message body is not [args, kwargs, embed]"
    embed = body[2] or {}
    unexpected = sorted(k for k, v in embed.items() if k not in _EMBED_KEYS or v)
    if unexpected:
        return f"task message asks for workflow fields the layer never sends: {unexpected}"
    return None


class DeadLetterConsumer(Consumer):
    """Celery's consumer, with undecodable, unknown and invalid messages dead-lettered."""

    app: PersistenceApp
    if TYPE_CHECKING:
        connection_errors: tuple[type[BaseException], ...]

    def create_task_handler(self, promise: Any = promise) -> Any:
        """Celery's task-message handler, behind the envelope check (see
        :func:`envelope_problem`)."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            problem = envelope_problem(message)
            if problem is None:
                return handle(message)
            self._record(message, f"invalid task message: {problem}", "BadMessage")
            message.reject_log_error(logger, self.connection_errors)
            return None

        return on_task_received

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
