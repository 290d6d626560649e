"""The Celery app: reliability options in one place, JSON only, beat schedule from settings."""

from __future__ import annotations

import ssl
from functools import cached_property
from typing import Any, cast

from agents_persistence.base import BaseCheckpointer
from agents_persistence.config.settings import Settings
from agents_persistence.config.urls import SentinelBroker
from agents_persistence.errors import StoreMisconfigured
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.broker.queues import celery_queue_options
from agents_persistence.tasks.protocol.compression import (
    install_message_compression,
    message_body_limit,
)
from agents_persistence.tasks.protocol.names import CLEANUP_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters
from celery import Celery

__all__ = ["BUILTIN_TASK_PREFIX", "PersistenceApp", "celery_config", "create_app"]

#: Prefix of Celery's built-in task names, none of which the layer serves.
BUILTIN_TASK_PREFIX = "celery."
_NO_CLUSTER_BROKER = (
    "the store is a Redis Cluster, which kombu cannot use as a broker: set broker_url "
    "(AGENTS_PERSISTENCE_BROKER_URL) to a separate Redis, a Sentinel group or RabbitMQ"
)


def _sentinel_options(settings: Settings, sentinel: SentinelBroker) -> dict[str, Any]:
    """kombu's Sentinel transport options: the service, and how to talk to the sentinels
    (their own credentials, TLS and timeouts; the data nodes' password is not theirs)."""
    talk: dict[str, Any] = {
        "socket_timeout": settings.publish_timeout_seconds,
        "socket_connect_timeout": min(
            settings.socket_connect_timeout_seconds, settings.publish_timeout_seconds
        ),
        **sentinel.sentinel_options,
    }
    if sentinel.tls:
        talk.update(ssl=True, **sentinel.ssl_options)
    return {
        "master_name": sentinel.master_name,
        "sentinels": [list(node) for node in sentinel.sentinels],
        "sentinel_kwargs": talk,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery option the layer relies on, derived from ``settings``.

    - JSON only, both ways; pickle is never accepted. Task message bodies are
      zstd-compressed (:mod:`agents_persistence.tasks.protocol.compression`): JSON
      underneath, inflated by workers only within a bound.
    - ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a message is acknowledged only
      after its write finished, and a worker that dies mid-task gives it back.
    - Redis behind Sentinel (``sentinel://``, ``redis+sentinel://``): the same transport on
      the primary the sentinels name; with ``broker_replica_acks`` (on Sentinel: follows
      ``replica_acks``) a publish returns only once that many replicas hold the message.
      A Redis Cluster cannot be a broker (StoreMisconfigured).
    - The visibility timeout (Redis broker) exceeds the hard time limit plus the longest
      retry countdown, so healthy messages are not redelivered while they run or wait.
    - No result backend: durability is read from the store itself (``flush``/``wait``).
    - RabbitMQ: publisher confirms (a hand-off returns once the broker holds it), on a
      classic or a quorum queue (``queue_type``).
    - Remote control and task events on every broker: ``celery inspect``/``status`` and
      Flower see the workers; events are JSON like everything else.
    """
    broker = settings.broker.get_secret_value()
    vt = settings.effective_visibility_timeout
    transport: dict[str, Any] = {
        "visibility_timeout": vt,
        # kombu sweeps for messages a dead worker left unacknowledged only every
        # interval x throttle seconds (10 x 10 by default): without these, a crash is
        # recovered up to ~100 s after the visibility timeout, whatever that timeout is.
        "unacked_restore_interval": min(10.0, max(1.0, vt / 4)),
        "unacked_restore_throttle": 1,
        # The broker's sockets answer within the publish timeout or the attempt fails: a
        # hung (not refusing) broker must not hold a hand-off longer than its bound.
        "socket_timeout": settings.publish_timeout_seconds,
        "socket_connect_timeout": min(
            settings.socket_connect_timeout_seconds, settings.publish_timeout_seconds
        ),
    }
    if broker.partition("://")[0].endswith("+cluster"):
        raise StoreMisconfigured("", _NO_CLUSTER_BROKER)
    sentinel = settings.broker_sentinel
    redis_broker = sentinel is not None or broker.startswith(("redis://", "rediss://"))
    extra: dict[str, Any] = {}
    if redis_broker:
        # kombu's Redis transport loses a message a worker dies holding between its pop and
        # its unacked record; ours moves it to an in-flight list instead
        # (agents_persistence.tasks.broker.redis_transport), on Sentinel too.
        kind = "Transport" if sentinel is None else "SentinelTransport"
        extra["broker_transport"] = f"agents_persistence.tasks.broker.redis_transport:{kind}"
        if settings.broker_replica_acks:
            # Replication is asynchronous: a push the primary took can vanish in a
            # failover. Each push waits for the replicas (WAIT), else it is published again.
            transport["replica_acks"] = settings.broker_replica_acks
            transport["replica_ack_timeout"] = settings.replica_ack_timeout_seconds
        if sentinel is not None:
            transport.update(_sentinel_options(settings, sentinel))
        transport["priority_steps"] = [0]  # one list per queue: BLMOVE takes one source
        # The restore sweep's lock key (kombu: 300 s) survives a broker killed mid-sweep
        # (AOF) and would hold off every restore until it expired. A sweep is at most 10
        # WATCHed restores, so overlapping sweeps after a short expiry restore nothing twice.
        transport["unacked_mutex_expire"] = max(5, int(2 * transport["unacked_restore_interval"]))
        if broker.startswith("rediss://") or (sentinel is not None and sentinel.tls):
            # Verify the server's certificate unless the URL says otherwise
            # (?ssl_cert_reqs=...&ssl_ca_certs=...); kombu alone would not verify it.
            extra["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if broker.startswith(("amqp", "pyamqp")):
        transport = {"confirm_publish": True, "write_timeout": settings.publish_timeout_seconds}
    return {
        **extra,
        "broker_url": broker,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.publish_timeout_seconds,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # ~4x fewer bytes for the worker's main process and Redis to move (the module's
        # docstring); kombu's alias, registered by PersistenceApp with a bounded decoder.
        "task_compression": "zstd",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A failed or timed-out task has no durable outcome: its message goes back (see
        # agents_persistence.tasks.worker.handlers.GiveBackRequest); only stored or dead-lettered
        # outcomes are acked.
        "task_acks_on_failure_or_timeout": False,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        "task_default_queue": settings.queue,
        "task_default_routing_key": settings.queue,
        "task_create_missing_queues": True,
        "task_always_eager": settings.eager,
        "task_eager_propagates": True,
        "worker_consumer": "agents_persistence.tasks.worker.consumer:DeadLetterConsumer",
        # Celery's prefork pool minus a crash on reconnect after a pool child died
        # (agents_persistence.tasks.worker.pool); -P solo/threads still choose their own.
        "worker_pool": "agents_persistence.tasks.worker.pool:TaskPool",
        "worker_hijack_root_logger": False,
        # Celery's tools on every broker: inspect/control/status (remote control), and the
        # workers' task events (received, started, succeeded, ...) for Flower and exporters
        # without a remote ``enable_events`` first. No task-sent event: hand-offs publish
        # through TaskSender, not send_task, and the event is a second publish per message
        # (send_task measured 1.6-1.8x slower with it, on Redis and on RabbitMQ).
        "worker_enable_remote_control": True,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "beat_schedule": {
            CLEANUP_TASK: {
                "task": CLEANUP_TASK,
                "schedule": settings.cleanup_interval_seconds,
                "options": {"queue": settings.queue, "expires": settings.cleanup_interval_seconds},
            }
        },
        "timezone": "UTC",
        "enable_utc": True,
        # A quorum queue (queue_type): declared with its arguments, retries delayed in
        # the broker (agents_persistence.tasks.broker.queues).
        **celery_queue_options(settings),
    }


class PersistenceApp(Celery):
    """A Celery app that carries its :class:`Settings`, store and dead-letter list.

    The store is built lazily, once per process (after a prefork worker forks), unless one
    is passed in.
    """

    def __init__(self, settings: Settings, *, store: BaseCheckpointer | None = None) -> None:
        super().__init__("agents_persistence", set_as_current=False)
        self.settings = settings
        install_message_compression(
            message_body_limit(settings.max_snapshot_bytes, settings.batch_max_bytes)
        )
        self._given_store = store
        self.config_from_object(celery_config(settings))

    def finalize(self, auto: bool = False) -> None:
        """Celery's finalize, then Celery's built-in tasks taken out of the registry.

        Celery registers ``celery.group``, ``celery.chunks``, ``celery.accumulate``,
        ``celery.backend_cleanup``, ... on every app; a message naming one would run it
        (a group can publish onto any queue). The layer uses none of them, so the worker
        serves only the layer's own tasks and refuses the rest as unknown.
        """
        first = not cast(Any, self).finalized  # the stubs leave the attribute out
        super().finalize(auto=auto)
        if first:
            registry = self.tasks
            for name in [n for n in registry if n.startswith(BUILTIN_TASK_PREFIX)]:
                del registry[name]

    @cached_property
    def store(self) -> BaseCheckpointer:
        """The checkpointer the tasks write through."""
        if self._given_store is not None:
            return self._given_store
        return RedisCheckpointer.from_settings(self.settings)

    @cached_property
    def dead_letters(self) -> DeadLetters:
        """Where permanently failed hand-offs go (the store's dead-letter list)."""
        return DeadLetters(self.store.dead_letter_list(self.settings.dead_letter_max_length))


def create_app(
    settings: Settings | None = None, *, store: BaseCheckpointer | None = None
) -> PersistenceApp:
    """A configured Celery app with the three tasks registered.

    Args:
        settings: defaults to :class:`Settings` read from the environment.
        store: the checkpointer tasks write through; default: a :class:`RedisCheckpointer`
            from ``settings``, built on first use in each process.
    """
    from agents_persistence.tasks.protocol.json_decoder import install_json_decoder
    from agents_persistence.tasks.worker.handlers import register_tasks

    install_json_decoder()  # exact same results as kombu's JSON decoder, ~2.8x faster
    app = PersistenceApp(settings if settings is not None else Settings(), store=store)
    register_tasks(app)
    if app.settings.metrics_port is not None:
        from agents_persistence.tasks.worker.metrics import install

        install(app)  # a worker running this app serves /metrics on the port
    if app.settings.log_format == "json":
        from agents_persistence.tasks.worker.logs import install as json_logs

        json_logs(app)  # a worker running this app logs one JSON object per line
    if app.settings.tracing:
        from agents_persistence.tasks.tracing import instrument

        instrument()  # spans, and trace context in message headers (extra [otel])
    return app
