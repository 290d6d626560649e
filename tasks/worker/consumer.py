"""A worker consumer that dead-letters messages Celery cannot even decode or route.

Celery's own consumer logs and acknowledges a message whose content type is not accepted
(pickle, say), whose body does not decode, or whose task is unknown; the message is then
gone. This one first records it in the dead-letter list (raw body included, base64, capped)
so nothing handed off disappears without a trace. It never executes such a message.

A message is acknowledged (or rejected) only once its dead letter is stored. While the list
cannot be written (the store unreachable after the core's retries, or its key of another
Redis type: ``WRONGTYPE``), the message is held unacknowledged, outside the prefetch window,
for a backoff (``task_backoff``, capped at a quarter of the visibility timeout); then a copy
(same body bytes, headers, properties, content type and encoding) is published to the tail
of its queue and, once the broker holds it, the original is acknowledged. Good messages keep
flowing meanwhile, and a queue of nothing but such messages does not spin: the worker tries
the list again only once its backoff since the last failure has passed. Should the copy
fail, the original goes back to the queue (``requeue=True``). The failure is logged at most
once a minute per process (CRITICAL, naming the key and the fix, for a key of another type).

Before Celery sees a task message, :func:`~agents_persistence.tasks.worker.message_checks.
envelope_problem` checks every field Celery reads in this process and the time headers;
a refused message is dead-lettered. Should Celery's strategy raise anyway, the message is
dead-lettered rather than ending the worker.

Queue entries that were not even kombu envelopes are set aside by the Redis transport
(:mod:`agents_persistence.tasks.broker.redis_transport`), which does not know the
namespace: this consumer installs the transport's ``on_unparsable`` hook on each broker
connection it opens, and the hook writes their records as dead letters. Compressed bodies
are inflated only by the layer's own zstd decoder, which refuses a frame above its bound
before allocating (:mod:`agents_persistence.tasks.protocol.compression`); kombu's other
decompressors are replaced, in the worker, by one that refuses.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from agents_persistence.backoff import Backoff
from agents_persistence.errors import BrokerMisconfigured, StoreMisconfigured
from agents_persistence.tasks.broker.queues import SWITCH_FIX, mismatch
from agents_persistence.tasks.protocol.compression import (
    MESSAGE_COMPRESSION,
    CompressedBodyRefused,
)
from agents_persistence.tasks.protocol.names import CLEANUP_TASK
from agents_persistence.tasks.worker.dead_letters import make_entry
from agents_persistence.tasks.worker.handlers import LogThrottle, report_misconfigured
from agents_persistence.tasks.worker.message_checks import MessageLimits, envelope_problem
from celery.worker.consumer import Consumer
from kombu import compression
from vine import promise

if TYPE_CHECKING:
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["CompressedBodyRefused", "DeadLetterConsumer", "refuse_decompression"]

logger = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024
#: Clock skew allowed between a producer and the worker, on top of the eta bound.
_ETA_SLACK_SECONDS = 5.0
#: Messages held (waiting to be re-published) beyond the prefetch window at most; any more
#: take the window's own slots, so a queue of nothing else is not all pulled into memory.
_MAX_HELD_BEYOND_PREFETCH = 100
#: Properties a held message's copy keeps, with the types brokers accept (the transport's
#: own, ``delivery_tag``, ``delivery_info`` and ``body_encoding``, are set anew; so is
#: ``user_id``, which RabbitMQ checks against the publishing connection's user).
_COPIED_PROPERTIES: dict[str, type | tuple[type, ...]] = {
    "correlation_id": str, "reply_to": str, "message_id": str, "type": str, "app_id": str,
    "timestamp": (int, float),
}  # fmt: skip
#: Seconds between two reports that the dead-letter list is unreachable, per process.
_UNAVAILABLE_LOG_PERIOD = 60.0
_unavailable_reports = LogThrottle(_UNAVAILABLE_LOG_PERIOD)


def _refuse(body: bytes) -> bytes:
    raise CompressedBodyRefused(f"compressed body of {len(body)} bytes refused")


def refuse_decompression() -> None:
    """Make every kombu decompressor but the layer's bounded zstd one refuse instead of
    inflating (idempotent): a few hundred bytes of zlib can inflate to hundreds of MB
    before anything can check them."""
    for content_type in compression.encoders():
        if content_type == MESSAGE_COMPRESSION:
            continue
        encoder = cast(Any, compression.get_encoder(content_type))[0]  # (encoder, type)
        compression.register(encoder, _refuse, content_type)


class DeadLetterConsumer(Consumer):
    """Celery's consumer, with undecodable, unknown and invalid messages dead-lettered.

    Each ``on_*`` handler and the envelope check dead-letter first; only then does Celery's
    own handler acknowledge or reject the message. If the dead letter cannot be written the
    message is held instead (see :meth:`_hold`) and Celery's handler is not called.
    """

    app: PersistenceApp
    if TYPE_CHECKING:
        connection_errors: tuple[type[BaseException], ...]
        qos: Any  # Celery's Tasks bootstep sets both (None until it starts)
        task_consumer: Any

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
        # A held message stays unacknowledged: well within the visibility timeout, or the
        # Redis broker would deliver it again beside its copy.
        self.hold_backoff = Backoff(
            cap=min(
                settings.task_retry_backoff_max_seconds,
                settings.effective_visibility_timeout / 4,
            )
        )
        self._push_failures = 0
        self._pushes_paused_until = 0.0
        self._held: dict[int, tuple[Any, Any, bool, Any]] = {}
        self._held_ids = itertools.count()

    def connect(self) -> Any:
        """Celery's broker connection, with the transport's ``on_unparsable`` hook set."""
        conn = super().connect()
        if hasattr(conn.transport, "on_unparsable"):
            conn.transport.on_unparsable = self._record_unparsable
        if conn.transport.driver_type == "amqp":
            self._check_queues(conn)
        return conn

    def _check_queues(self, conn: Any) -> None:
        """Declare the queues this worker consumes as the settings describe them; a queue
        RabbitMQ holds with another type or other arguments (a classic queue met with
        ``queue_type = "quorum"``) stops the worker with one CRITICAL line saying how to
        fix it, rather than a traceback from deep inside Celery's consumer start.

        Raises:
            BrokerMisconfigured: RabbitMQ refused a declaration (Celery then ends the
                worker: no restart of the consumer fixes it).
        """
        for queue in list(self.app.amqp.queues.consume_from.values()):
            channel = conn.channel()
            try:
                queue.bind(channel).declare()
            except Exception as exc:
                if not mismatch(exc):
                    raise
                text = getattr(exc, "reply_text", None) or str(exc)
                logger.critical("queue %s: %s; %s", queue.name, text, SWITCH_FIX)
                raise BrokerMisconfigured(queue.name, f"{text}; {SWITCH_FIX}") from exc
            finally:
                with contextlib.suppress(Exception):  # closed already by a refusal
                    channel.close()

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
            if self._record(message, f"invalid task message: {problem}", error):
                message.reject_log_error(logger, self.connection_errors)
            return None

        return on_task_received

    def _entry(self, message: Any, reason: str, error: str) -> dict[str, Any]:
        """The dead-letter entry of ``message`` (its reason alone if the message's fields
        cannot even be read)."""
        namespace = self.app.settings.namespace
        try:
            raw = message.body
            body = raw if isinstance(raw, bytes) else str(raw)[:_MAX_BODY].encode()
            headers = {
                k: v[:1000] if isinstance(v, str) else v
                for k, v in (message.headers or {}).items()
                if k in ("task", "id") and isinstance(v, (str, int))
            }
            return make_entry(
                reason,
                error,
                namespace=namespace,
                task=headers.get("task"),
                task_id=headers.get("id"),
                content_type=str(message.content_type)[:200],
                content_encoding=str(message.content_encoding)[:200],
                body_base64=base64.b64encode(body[:_MAX_BODY]).decode(),
                body_truncated=len(body) > _MAX_BODY,
            )
        except Exception:
            logger.exception("could not read an undecodable message; dead-lettering its reason")
            return make_entry(reason, error, namespace=namespace)

    def _record(self, message: Any, reason: str, error: str) -> bool:
        """Dead-letter ``message``: True once the entry is stored, and the caller then
        acknowledges or rejects the message.

        False if the list cannot be written now (or failed less than a backoff ago): the
        message is held (:meth:`_hold`) and the caller must leave it alone.
        """
        now = time.monotonic()
        if now < self._pushes_paused_until:
            self._hold(message, self._pushes_paused_until - now)
            return False
        entry = self._entry(message, reason, error)
        try:
            self.app.dead_letters.push(entry)
        except Exception as exc:
            delay = self.hold_backoff.delay(self._push_failures)
            self._push_failures += 1
            self._pushes_paused_until = time.monotonic() + delay
            self._report_push_failure(exc)
            self._hold(message, delay)
            return False
        self._push_failures = 0
        self._pushes_paused_until = 0.0
        return True

    def _report_push_failure(self, exc: Exception) -> None:
        if isinstance(exc, StoreMisconfigured):
            report_misconfigured(exc, self.hold_backoff.cap)
            return
        held = _unavailable_reports.due("dead-letter list")
        if held is None:
            return
        logger.error(
            "dead-letter list unavailable (%s: %s): messages to dead-letter are held and "
            "re-published to their queue every %.0f s at most until it can be written; %d "
            "more held in this process since the last report",
            type(exc).__name__, exc, self.hold_backoff.cap, held,
        )  # fmt: skip

    def _hold(self, message: Any, delay: float) -> None:
        """Keep ``message`` unacknowledged for ``delay`` seconds, then re-publish it
        (:meth:`_release`), on the consumer's timer: the event loop never sleeps.

        The prefetch window is widened by one while it waits (as Celery does for a task
        with an eta), up to :data:`_MAX_HELD_BEYOND_PREFETCH` held messages, so good
        messages keep arriving meanwhile.
        """
        qos = self.qos
        widened = qos is not None and len(self._held) < _MAX_HELD_BEYOND_PREFETCH
        if widened:
            qos.increment_eventually()
        key = next(self._held_ids)
        if self.timer is None:  # no timer (not a worker's consumer): at once
            self._held[key] = (message, qos, widened, None)
            self._release(key)
            return
        entry = self.timer.call_after(delay, self.call_soon, (self._release, key))
        self._held[key] = (message, qos, widened, entry)

    def _release(self, key: int) -> None:
        """Publish a copy of a held message to the tail of its queue, then acknowledge the
        original; if the copy fails, give the original back (``requeue=True``)."""
        held = self._held.pop(key, None)
        if held is None:  # the connection was closed meanwhile: the broker gives it back
            return
        message, qos, widened, _ = held
        if widened and qos is self.qos:
            qos.decrement_eventually()
        try:
            self._republish(message)
        except Exception as exc:
            if message.acknowledged:
                logger.error("could not re-publish a message Celery had acknowledged (%s: "
                             "%s); it is lost", type(exc).__name__, exc)  # fmt: skip
                return
            logger.warning("could not re-publish a message to dead-letter (%s: %s); it goes "
                           "back to the queue", type(exc).__name__, exc)  # fmt: skip
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            return
        if not message.acknowledged:
            message.ack_log_error(logger, self.connection_errors)

    def _home(self, delivery_info: Any) -> tuple[str, str]:
        """The exchange and routing key that reach ``message``'s queue, and it alone: the
        default exchange and the queue's name when it is one this consumer reads; the
        message's own otherwise."""
        info = delivery_info if isinstance(delivery_info, dict) else {}
        exchange, routing_key = info.get("exchange") or "", info.get("routing_key") or ""
        queues = list(getattr(self.task_consumer, "queues", None) or ())
        for queue in queues:
            if routing_key == queue.name or (
                routing_key == queue.routing_key and exchange == queue.exchange.name
            ):
                return "", str(queue.name)
        if len(queues) == 1:
            return "", str(queues[0].name)
        return str(exchange), str(routing_key)

    def _republish(self, message: Any) -> None:
        """Publish a copy of ``message`` (same body bytes, headers, properties, content
        type and encoding) to the tail of its queue; returns once the broker holds it."""
        properties = message.properties if isinstance(message.properties, dict) else {}
        copied = {
            name: value
            for name, kind in _COPIED_PROPERTIES.items()
            if isinstance(value := properties.get(name), kind) and not isinstance(value, bool)
        }
        priority = properties.get("priority")
        if not (isinstance(priority, int) and 0 <= priority <= 255):
            priority = 0
        mode = properties.get("delivery_mode")
        expiration = properties.get("expiration")  # milliseconds, as a string
        if isinstance(expiration, str) and expiration.isdigit():
            copied["expiration"] = int(expiration) / 1000  # kombu takes seconds
        exchange, routing_key = self._home(message.delivery_info)
        body = message.body
        headers = dict(message.headers or {})
        # kombu inflated a zstd body it could (the header stays): the copy is compressed
        # again, as sent. A body it could not inflate is copied as it came, header and all.
        recompress = None
        if headers.get("compression") == MESSAGE_COMPRESSION and not message.errors:
            recompress = headers.pop("compression")
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                body if isinstance(body, bytes) else str(body).encode(),
                exchange=exchange,
                routing_key=routing_key,
                headers=headers,
                compression=recompress,
                content_type=message.content_type or "application/data",
                content_encoding=message.content_encoding or "binary",
                priority=priority,
                delivery_mode=mode if mode in (1, 2) else 2,
                retry=False,
                timeout=self.app.settings.publish_timeout_seconds,
                **copied,
            )

    def on_close(self) -> None:
        """Celery's cleanup of a closed connection; held messages are forgotten too (they
        were never acknowledged: the broker delivers them again)."""
        held, self._held = self._held, {}
        for _, _, _, entry in held.values():
            if entry is not None and self.timer is not None:
                try:
                    self.timer.cancel(entry)
                except Exception:  # one that cannot be cancelled finds nothing to release
                    logger.debug("could not cancel a held message's timer", exc_info=True)
        super().on_close()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if self._record(message, f"message could not be decoded: {exc}", type(exc).__name__):
            super().on_decode_error(message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._record(message, f"unknown task: {exc}", type(exc).__name__):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._record(message, f"invalid task message: {exc}", type(exc).__name__):
            super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if self._record(message, "message is not a task message", "UnknownMessage"):
            super().on_unknown_message(body, message)
