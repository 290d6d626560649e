"""Publishing the layer's task messages: the message ``app.send_task`` builds, for less.

``send_task`` spends most of a hand-off on work that never changes between saves: routing,
merging the retry policy, ``saferepr`` of a payload of up to megabytes for the
``kwargsrepr`` header, and kombu's stdlib JSON encoder escaping the nested snapshot JSON.
:class:`TaskSender` resolves the route once and writes a short ``kwargsrepr``; the message
itself (headers, properties, the sent event) is built and published by Celery's own
``app.amqp.create_task_message`` and ``app.amqp.send_task_message``, as ``send_task`` does,
with only the body encoded beforehand by orjson (still ``application/json``).
``tests/unit/test_sender.py`` proves the two publish the same message.

A thread that publishes message after message (the buffered publisher) can hold one producer
from the app's pool for as long as it runs (:meth:`TaskSender.holding_producer`), rather than
take one and give it back per message (each time re-binding it to a channel); the broker
connection under it is the pool's, and kombu's publish retries reconnect it as usual. A send
that failed gives the held producer back, and the next one takes a fresh one.

When anything is connected to Celery's publish signals (``before_task_publish``,
``after_task_publish``, ``task_sent``), it simply calls ``app.send_task``, so hooks (tracing,
auditing) see every message as they would otherwise (the body as a tuple, not bytes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import orjson
from agents_persistence.errors import BrokerMisconfigured
from agents_persistence.tasks.broker.queues import SWITCH_FIX, mismatch
from celery import Celery, signals
from kombu.utils.uuid import uuid

__all__ = ["TaskSender"]


def _hooked() -> bool:
    return bool(
        signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
        or signals.task_sent.receivers
    )


class TaskSender:
    """Publishes task messages to one queue of ``app`` (see the module docstring).

    Args:
        app: the Celery app (its broker, producer pool and configuration).
        queue: the queue every message goes to.
        retry_policy: kombu publish retry policy, merged over ``task_publish_retry_policy``.
        timeout: seconds one publish attempt may wait for the broker's confirm (RabbitMQ);
            None waits forever, so a hung broker would hang the caller.
    """

    def __init__(
        self,
        app: Celery,
        queue: str,
        retry_policy: Mapping[str, Any],
        timeout: float | None = None,
    ) -> None:
        self.app = app
        self.queue_name = queue
        self.retry_policy = dict(retry_policy)
        self.timeout = timeout
        self._queue: Any = None
        self._held = threading.local()  # .stack: ExitStack holding this thread's producer

    def send(self, name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        """Publish task ``name`` with ``kwargs``; returns once the broker accepted it.

        Raises:
            kombu.exceptions.OperationalError, OSError: the broker did not accept it
                within the retry policy (as ``send_task`` raises).
            BrokerMisconfigured: RabbitMQ refuses the queue's declaration (a classic
                queue met with ``queue_type = "quorum"``, or the other way round).
        """
        with self._refusal_typed():
            self._send(name, kwargs, kwargsrepr)

    def _send(self, name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        if _hooked():
            self._send_task(name, kwargs, kwargsrepr)
            return
        app, amqp = self.app, self.app.amqp
        # What send_task passes for a plain call of a task without options of its own.
        message = amqp.create_task_message(
            uuid(),
            name,
            (),
            kwargs,
            reply_to=app.thread_oid,
            create_sent_event=app.conf.task_send_sent_event,
            ignore_result=True,
            argsrepr="()",
            kwargsrepr=kwargsrepr,
        )
        try:
            body = orjson.dumps(message.body)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: let kombu's encoder decide
            self._send_task(name, kwargs, kwargsrepr)
            return
        if self._queue is None:
            self._queue = amqp.queues[self.queue_name]
        held = self._held_producer()
        with app.producer_or_acquire(held) as producer, self._giving_back_on_error(held):
            amqp.send_task_message(
                producer,
                name,
                message._replace(body=body),
                queue=self._queue if held is None else self._bound_queue(producer),
                retry=True,
                retry_policy=self.retry_policy,
                timeout=self.timeout,
                confirm_timeout=self.timeout,
                kwargsrepr=kwargsrepr,
                content_type="application/json",
                content_encoding="utf-8",
            )

    @contextmanager
    def holding_producer(self) -> Iterator[None]:
        """Within the block, this thread's :meth:`send` calls share one producer from the
        app's pool (taken at the first send, given back when the block ends). Not with a
        pool of a single producer (``broker_pool_limit=1``): other threads' sends (re-sends,
        durable hand-offs) would wait for it as long as the block lasts."""
        if self.app.conf.broker_pool_limit == 1:
            yield
            return
        stack = ExitStack()
        self._held.stack = stack
        self._held.producer = None
        try:
            yield
        finally:
            del self._held.stack, self._held.producer
            self._held.queue = None
            stack.close()

    def _held_producer(self) -> Any:
        """This thread's held producer (taken now if it has none yet); None if it holds none."""
        stack: ExitStack | None = getattr(self._held, "stack", None)
        if stack is None:
            return None
        if self._held.producer is None:
            self._held.producer = stack.enter_context(self.app.producer_or_acquire())
        return self._held.producer

    def _bound_queue(self, producer: Any) -> Any:
        """The queue bound to ``producer``'s channel, bound once per channel: kombu's
        declare would otherwise copy the queue and its exchange to bind them, every send."""
        queue = getattr(self._held, "queue", None)
        channel = producer.channel
        if queue is None or queue.channel is not channel:
            queue = self._held.queue = self._queue.bind(channel)
        return queue

    @contextmanager
    def _refusal_typed(self) -> Iterator[None]:
        """RabbitMQ's refusal of the queue's declaration as :class:`BrokerMisconfigured`
        (no retry fixes it); every other error as it is."""
        try:
            yield
        except Exception as exc:
            if not mismatch(exc):
                raise
            text = getattr(exc, "reply_text", None) or str(exc)
            raise BrokerMisconfigured(self.queue_name, f"{text}; {SWITCH_FIX}") from exc

    @contextmanager
    def _giving_back_on_error(self, held: Any) -> Iterator[None]:
        """Give a held producer back to the pool if the send fails: the next send takes
        a fresh one rather than reuse one whose connection may be broken."""
        try:
            yield
        except BaseException:
            if held is not None:
                self._held.producer = None
                with suppress(Exception):  # the send's own error is the one to report
                    self._held.stack.close()
            raise

    def _send_task(self, name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        self.app.send_task(
            name,
            kwargs=kwargs,
            queue=self.queue_name,
            retry=True,
            retry_policy=self.retry_policy,
            ignore_result=True,
            kwargsrepr=kwargsrepr,
            timeout=self.timeout,
            confirm_timeout=self.timeout,
        )
