"""The workers' metrics endpoint: every pool process's counts at one ``/metrics``.

With ``AGENTS_PERSISTENCE_METRICS_PORT`` set, :func:`install` (called by ``create_app``)
hooks three Celery signals:

- ``worker_init`` (the main process, before the pool forks): prometheus_client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``; a fresh temp dir unless set, and emptied
  of an earlier run's files if set), then an HTTP server on the port serving a
  ``MultiProcessCollector`` over that directory plus :class:`StateCollector`. Each pool
  process writes its own file; a child that is replaced leaves its file, which keeps
  counting once (its successor has another pid, so another file).
- ``worker_process_init`` (each pool child): close the inherited listening socket.
- ``worker_process_shutdown`` (a pool child exits): ``mark_process_dead`` for its pid.

:class:`StateCollector` reads the gauges at scrape time: dead letters (``LLEN``), live and
expired threads (two ``ZCOUNT``), the queue's depth (a passive queue declare on the broker).
Each is one cheap command; one that fails is left out of that scrape (and logged), it never
fails the scrape.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from agents_persistence.metrics import MULTIPROC_ENV, metrics, use_multiprocess
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.protocol.names import DELETE_TASK, SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters
from celery import signals
from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["StateCollector", "dead_lettered", "install", "queue_depth"]

logger = logging.getLogger(__name__)

#: The running endpoint of this process (main worker process only).
_server: WSGIServer | None = None
#: The multiprocess directory this process created (removed at shutdown).
_own_dir: str | None = None


def queue_depth(app: PersistenceApp, queue: str | None = None) -> int:
    """Messages waiting in ``queue`` (default: the app's) on the broker; 0 if it does not
    exist yet (a Redis queue exists only while it holds messages)."""
    name = queue or app.settings.queue
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        try:
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except ChannelError:
            return 0


def dead_lettered(task: str, kwargs: Mapping[str, Any]) -> None:
    """Count a dead letter of ``task`` as failed saves (every entry of a batch) or a failed
    delete."""
    if task == SAVE_TASK:
        metrics().saved("failed")
    elif task == SAVE_BATCH_TASK:
        entries = kwargs.get("entries")
        metrics().saved("failed", count=len(entries) if isinstance(entries, list) else 1)
    elif task == DELETE_TASK:
        metrics().deleted("failed")


class StateCollector(Collector):
    """Gauges read from Redis and the broker at scrape time."""

    def __init__(self, app: PersistenceApp) -> None:
        self.app = app
        settings = app.settings
        # A store of its own, without retries: a scrape never waits out an outage.
        self.store = RedisCheckpointer.from_url(
            settings.redis_url.get_secret_value(),
            namespace=settings.namespace,
            retry=RetryPolicy(attempts=0),
            socket_timeout=min(settings.socket_timeout_seconds, 2.0),
            socket_connect_timeout=min(settings.socket_connect_timeout_seconds, 2.0),
        )
        self.dead_letters = DeadLetters(
            self.store.dead_letter_list(settings.dead_letter_max_length)
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            letters = self.dead_letters.count()
        except Exception as exc:
            logger.warning("metrics: dead letters not read (%s)", type(exc).__name__)
        else:
            yield GaugeMetricFamily(
                "agents_persistence_dead_letters",
                "Dead letters kept for the namespace.",
                value=letters,
            )
        try:
            live, expired = self.store.count_threads()
        except Exception as exc:
            logger.warning("metrics: threads not counted (%s)", type(exc).__name__)
        else:
            threads = GaugeMetricFamily(
                "agents_persistence_threads",
                "Threads of the namespace: live, or expired and not yet cleaned up.",
                labels=["state"],
            )
            threads.add_metric(["live"], live)
            threads.add_metric(["expired"], expired)
            yield threads
        try:
            depth = queue_depth(self.app)
        except Exception as exc:
            logger.warning("metrics: queue depth not read (%s)", type(exc).__name__)
        else:
            yield GaugeMetricFamily(
                "agents_persistence_queue_depth",
                "Hand-off messages waiting in the namespace's queue.",
                value=depth,
            )


def exposition_registry(app: PersistenceApp, directory: str) -> CollectorRegistry:
    """A registry summing every process's files in ``directory``, plus the gauges."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(StateCollector(app))
    return registry


def install(app: PersistenceApp) -> None:
    """Serve ``app``'s metrics from the worker that runs it (``settings.metrics_port``)."""
    port = app.settings.metrics_port
    if port is None:
        return

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        global _server, _own_dir  # noqa: PLW0603 - one endpoint per worker process
        if getattr(sender, "app", None) is not app or _server is not None:
            return
        given = os.environ.get(MULTIPROC_ENV)
        directory = use_multiprocess(given)
        _own_dir = None if given else directory
        _server, _thread = start_http_server(port, registry=exposition_registry(app, directory))
        logger.info("metrics served on port %d (multiprocess directory %s)", port, directory)

    def on_child_init(**_: Any) -> None:
        global _server  # noqa: PLW0603
        if _server is not None:  # the parent's listening socket, inherited by fork
            _server.socket.close()
            _server = None

    def on_child_shutdown(pid: int | None = None, **_: Any) -> None:
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(pid if pid is not None else os.getpid())  # type: ignore[no-untyped-call]

    def on_worker_shutdown(**_: Any) -> None:
        global _server, _own_dir  # noqa: PLW0603
        if _server is not None:
            _server.shutdown()
            _server.server_close()
            _server = None
        if _own_dir is not None:
            shutil.rmtree(_own_dir, ignore_errors=True)
            _own_dir = None

    uid = f"agents_persistence.metrics:{id(app)}"
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid)
    signals.worker_process_init.connect(on_child_init, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(on_child_shutdown, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid=uid)
