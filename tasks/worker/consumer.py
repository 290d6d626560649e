"""A worker consumer that dead-letters messages Celery cannot even decode or route.

Celery's own consumer logs and acknowledges a message whose content type is not accepted
(pickle, say), whose body does not decode, or whose task is unknown; the message is then
gone. This one first records it in the dead-letter list (raw body included, base64, capped)
so nothing handed off disappears without a trace. It never executes such a message.

Before Celery sees a task message, :func:`~agents_persistence.tasks.worker.message_checks.
envelope_problem` checks every field Celery reads in this process and the time headers;
a refused message is dead-lettered. Should Celery's strategy raise anyway, the message is
dead-lettered rather than ending the worker.

Queue entries that were not even kombu envelopes are set aside by the Redis transport
(:mod:`agents_persistence.tasks.broker.redis_transport`), which does not know the
namespace: this consumer installs the transport's ``on_unparsable`` hook on each broker
connection it opens, and the hook writes their records as dead letters. Compressed bodies
are never decompressed: kombu's decompressors are replaced, in the worker, by one that
refuses (the layer never compresses a message).
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any, cast

from agents_persistence.tasks.protocol.names import CLEANUP_TASK
from agents_persistence.tasks.worker.dead_letters import make_entry
from agents_persistence.tasks.worker.message_checks import MessageLimits, envelope_problem
from celery.worker.consumer import Consumer
from kombu import compression
from vine import promise

if TYPE_CHECKING:
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["DeadLetterConsumer", "refuse_decompression"]

logger = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024
#: Clock skew allowed between a producer and the worker, on top of the eta bound.
_ETA_SLACK_SECONDS = 5.0


class CompressedBodyRefused(ValueError):
    """A message body arrived compressed; the layer never compresses, so it is refused."""


def _refuse(body: bytes) -> bytes:
    raise CompressedBodyRefused(f"compressed body of {len(body)} bytes refused")


def refuse_decompression() -> None:
    """Make every kombu decompressor refuse instead of inflating (idempotent): a few
    hundred bytes of zlib can inflate to hundreds of MB before anything can check them."""
    for content_type in compression.encoders():
        encoder = cast(Any, compression.get_encoder(content_type))[0]  # (encoder, type)
        compression.register(encoder, _refuse, content_type)


class DeadLetterConsumer(Consumer):
    """Celery's consumer, with undecodable, unknown and invalid messages dead-lettered."""

    app: PersistenceApp
    if TYPE_CHECKING:
        connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        refuse_decompression()
        super().__init__(*args, **kwargs)
        settings = self.app.settings
        horizon = max(
            settings.effective_visibility_timeout - settings.task_time_limit_seconds,
            settings.task_retry_backoff_max_seconds,
        )
        self.message_limits = MessageLimits(
            max_eta_seconds=horizon + _ETA_SLACK_SECONDS, never_expire=frozenset({CLEANUP_TASK})
        )

    def connect(self) -> Any:
        """Celery's broker connection, with the transport's ``on_unparsable`` hook set."""
        conn = super().connect()
        if hasattr(conn.transport, "on_unparsable"):
            conn.transport.on_unparsable = self._record_unparsable
        return conn

    def _record_unparsable(self, record: dict[str, Any]) -> None:
        """Dead-letter a queue entry the transport could not parse (raises if the store
        fails, so the transport keeps the record)."""
        entry = make_entry(
            f"broker entry is not a task message: {record.get('reason')}",
            "UnparsableEntry",
            namespace=self.app.settings.namespace,
            queue=record.get("queue"),
            body_base64=record.get("excerpt_base64"),
            body_truncated=record.get("truncated"),
            original_bytes=record.get("raw_bytes"),
            sha256=record.get("sha256"),
        )
        self.app.dead_letters.push(entry)

    def create_task_handler(self, promise: Any = promise) -> Any:
        """Celery's task-message handler, behind the envelope check (see
        :func:`envelope_problem`)."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            problem = envelope_problem(message, self.message_limits)
            if problem is None:
                try:
                    return handle(message)
                except self.connection_errors:
                    raise
                except Exception as exc:  # Celery's strategy raised: that would end us
                    logger.exception("a task message broke Celery's strategy")
                    problem = f"Celery could not take the message: {type(exc).__name__}: {exc}"
                    if message.acknowledged:
                        self._record(message, problem, "BadMessage")
                        return None
            error = "Expired" if problem.startswith("expired") else "BadMessage"
            self._record(message, f"invalid task message: {problem}", error)
            message.reject_log_error(logger, self.connection_errors)
            return None

        return on_task_received

    def _record(self, message: Any, reason: str, error: str) -> None:
        try:
            raw = message.body
            body = raw if isinstance(raw, bytes) else str(raw)[:_MAX_BODY].encode()
            headers = {
                k: v[:1000] if isinstance(v, str) else v
                for k, v in (message.headers or {}).items()
                if k in ("task", "id") and isinstance(v, (str, int))
            }
            entry = make_entry(
                reason,
                error,
                namespace=self.app.settings.namespace,
                task=headers.get("task"),
                task_id=headers.get("id"),
                content_type=str(message.content_type)[:200],
                content_encoding=str(message.content_encoding)[:200],
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
