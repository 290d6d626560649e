"""Publishing the layer's task messages: the same message ``app.send_task`` builds, for less.

``send_task`` spends most of a hand-off on work that never changes between saves: routing,
merging the retry policy, ``saferepr`` of a payload of up to megabytes for the
``kwargsrepr`` header, and kombu's stdlib JSON encoder escaping the nested snapshot JSON.
:class:`TaskSender` resolves the route once, writes a short ``kwargsrepr``, encodes the
body with orjson (still ``application/json``; workers decode it as any Celery JSON
message), and publishes through the app's producer pool with the same retry policy,
delivery mode and queue declaration. Messages are Celery protocol 2, so every worker reads
them unchanged.

When anything is connected to Celery's publish signals (``before_task_publish``,
``after_task_publish``, ``task_sent``), or the app speaks another protocol, it simply calls
``app.send_task``, so hooks (tracing, auditing) still see every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from celery import Celery, signals
from celery.utils.nodenames import anon_nodename
from kombu.utils.uuid import uuid

__all__ = ["TaskSender"]

_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


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
        conf = app.conf
        self._lean = int(conf.task_protocol) == 2
        self._policy = {**(conf.task_publish_retry_policy or {}), **self.retry_policy}
        self._origin = anon_nodename()
        self._queue: Any = None
        self._delivery_mode: Any = None

    def send(self, name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        """Publish task ``name`` with ``kwargs``; returns once the broker accepted it.

        Raises:
            kombu.exceptions.OperationalError, OSError: the broker did not accept it
                within the retry policy (as ``send_task`` raises).
        """
        if not self._lean or _hooked():
            self._send_task(name, kwargs, kwargsrepr)
            return
        try:
            body = orjson.dumps(((), kwargs, _EMBED))
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: let kombu's encoder decide
            self._send_task(name, kwargs, kwargsrepr)
            return
        if self._queue is None:
            self._queue = self.app.amqp.queues[self.queue_name]
            mode = self._queue.exchange.delivery_mode
            self._delivery_mode = mode or self.app.conf.task_default_delivery_mode
        task_id = uuid()
        headers: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": kwargsrepr,
            "origin": self._origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=self.queue_name,
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
                delivery_mode=self._delivery_mode,
                correlation_id=task_id,
                reply_to="",
                retry=True,
                retry_policy=self._policy,
                declare=[self._queue],
                timeout=self.timeout,
                confirm_timeout=self.timeout,
            )

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
