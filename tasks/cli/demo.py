"""``agents-persistence demo``: a simulated agent fleet handing state to a real Celery worker.

1. The store: ``AGENTS_PERSISTENCE_REDIS_URL`` if set (in a fresh ``<namespace>.demo-<id>``
   namespace unless ``--namespace`` is given), else a private embedded Redis
   (:mod:`agents_persistence.tasks.devtools.redis_server`). The first line of output says which.
2. A real ``celery -A agents_persistence.tasks worker`` child with the same settings (passed
through its
   environment) and a queue of its own; a probe save proves it is consuming.
3. N agent threads x M steps hand a growing snapshot each to a
   :class:`~agents_persistence.tasks.client.checkpointer.CeleryCheckpointer`; then ``flush()``,
   then every thread is read
   back and audited (:mod:`agents_persistence.tasks.cli.fleet`): ``lost`` must be 0, or the exit
   code is 1.
4. Listing, cleanup, the summary table; the worker and the embedded Redis are ended by PID,
   and the demo's keys removed (unless ``--keep``), on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from agents_persistence.config.settings import Settings, redact_url
from agents_persistence.errors import FlushTimeout, PersistenceError
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.cli.fleet import (
    AgentRun,
    Audit,
    Traffic,
    audit,
    metric_rows,
    run_fleet,
)
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.devtools.celery_process import WORKER_APP, CeleryWorker
from agents_persistence.tasks.devtools.embedded import EmbeddedKind, start_embedded_redis
from agents_persistence.tasks.devtools.processes import child_env
from agents_persistence.tasks.worker.app import celery_config, create_app
from kombu import Connection
from kombu.exceptions import KombuError
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["DemoOptions", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """What ``agents-persistence demo`` was asked to do (see its ``--help``)."""

    agents: int = 20
    steps: int = 50
    mode: Literal["durable", "buffered"] = "buffered"
    embedded: EmbeddedKind = "auto"
    namespace: str | None = None
    keep: bool = False
    think_ms: float = 0.0
    concurrency: int = 2
    timeout: float = 60.0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs, so its cleanup runs too."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> int:
    """Run the demo; returns the exit code (0: nothing lost). Cleans up on any exit."""
    with contextlib.ExitStack() as stack, _sigterm_as_interrupt():
        return _Demo(settings, options, console, stack).run()
    raise AssertionError("unreachable")  # pragma: no cover


class _Demo:
    """One run: each phase registers how to undo itself on ``stack`` before it starts."""

    def __init__(
        self,
        settings: Settings,
        options: DemoOptions,
        console: Console,
        stack: contextlib.ExitStack,
    ) -> None:
        self.settings, self.options, self.console, self.stack = settings, options, console, stack
        self.run_id = uuid.uuid4().hex[:8]
        self.thread_ids = [f"demo-{self.run_id}-agent-{i:03d}" for i in range(options.agents)]
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ap-demo-")))

    def run(self) -> int:
        store, demo, label = self.open_store()
        client, worker_info = self.start_worker(store, demo)
        runs, times, traffic = self.hand_off(client)
        result = audit(client, runs)
        verdict = "OK" if result.lost == 0 else "FAILED"
        self.say(
            f"Verified {verdict}: {result.persisted} threads hold their last version, "
            f"{result.superseded} older snapshots superseded "
            f"({traffic.superseded_in_buffer} of them in the buffer), {result.lost} lost"
        )
        wanted = set(self.thread_ids)
        listed = [tid for tid in store.iter_threads(page_size=100) if tid in wanted]
        ends = f"{listed[0]} ... {listed[-1]}" if listed else "none"
        self.say(f"Listed: {len(listed)} threads ({ends})")
        removed = store.cleanup_expired()
        self.say(f"Cleanup: {removed} expired index entries removed")
        worker_info += f", exit code {self.worker.stop()}"
        about = [
            ("store", label),
            ("namespace", demo.namespace),
            (
                "worker",
                f"celery -A {WORKER_APP} worker -c {self.options.concurrency}; {worker_info}",
            ),
        ]
        table = _summary(
            runs,
            result,
            traffic,
            self.options,
            about=about,
            times=times,
            listed=len(listed),
            removed=removed,
        )
        self.console.print(table)
        if self.options.keep:
            self.say(f"Kept the demo's keys in namespace {demo.namespace} (--keep).")
        return 0 if result.lost == 0 else 1

    def say(self, line: str) -> None:
        """One line, never wrapped or read as markup (ids and URLs are printed as they are)."""
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def open_store(self) -> tuple[RedisCheckpointer, Settings, str]:
        """The store (the configured Redis or an embedded one) and the demo's settings."""
        settings, options, run_id = self.settings, self.options, self.run_id
        external = "redis_url" in settings.model_fields_set
        if external:
            url = settings.redis_url.get_secret_value()
            namespace = options.namespace or f"{settings.namespace[:50]}.demo-{run_id}"
            where = f"your Redis at {redact_url(url)} (AGENTS_PERSISTENCE_REDIS_URL)"
            label = redact_url(url)
        else:
            server = self.stack.enter_context(start_embedded_redis(options.embedded))
            url, namespace = server.url, options.namespace or settings.namespace
            where = f"{server.describe()} (no AGENTS_PERSISTENCE_REDIS_URL set)"
            label = f"embedded {server.kind} {server.version}, {server.url}"
        self.say(f"Store: {where}, namespace {namespace}")
        demo = settings.model_copy(
            update={
                "redis_url": SecretStr(url),
                "namespace": namespace,
                "queue": f"{settings.queue[:150]}.demo-{run_id}",
                "eager": False,
                "handoff_mode": options.mode,
            }
        )
        store = RedisCheckpointer.from_settings(demo)
        self.stack.callback(store.close)
        store.ping()
        if external or demo.broker_url is not None:  # not a throwaway embedded server
            self.stack.callback(_remove_demo_queue, demo)  # of no use after the run
        if not options.keep:
            ids = [*self.thread_ids, self.probe_id]
            whole = options.namespace is None
            self.stack.callback(_remove_demo_keys, store, ids, whole_namespace=whole)
        return store, demo, label

    @property
    def probe_id(self) -> str:
        return f"demo-{self.run_id}-probe"

    def start_worker(
        self, store: RedisCheckpointer, demo: Settings
    ) -> tuple[CeleryCheckpointer, str]:
        """Start the worker child, and a client whose probe save proves it consumes."""
        self.worker = CeleryWorker(
            child_env(demo),
            directory=self.workdir,
            queues=[demo.queue],
            name=f"demo-{self.run_id}",
            concurrency=self.options.concurrency,
            loglevel="warning",  # no line per task; the probe save below says it is ready
        )
        started = time.perf_counter()
        self.worker.start()
        self.stack.callback(self.worker.stop)
        app = create_app(demo, store=store)
        client = CeleryCheckpointer(store, app, settings=demo, mode=self.options.mode)
        self.stack.callback(client.close, 5.0)
        probe = client.save_state(self.probe_id, AgentStateSnapshot(scratchpad={"probe": 1}))
        self.worker.wait_until(lambda: _durable(probe.wait, 0.2), 60.0, "a durable probe save")
        store.delete_thread(self.probe_id)
        info = f"pid {self.worker.pid}, queue {demo.queue}"
        self.say(
            f"Worker: celery -A {WORKER_APP} worker -c {self.options.concurrency} ({info}) "
            f"consuming after {time.perf_counter() - started:.1f} s"
        )
        return client, f"pid {self.worker.pid}"

    def hand_off(
        self, client: CeleryCheckpointer
    ) -> tuple[list[AgentRun], tuple[float, ...], Traffic]:
        """Run the fleet under a progress bar, then flush; returns the runs, the timings and
        what the client published for them."""
        opts = self.options
        before = Traffic.of(client)
        columns = (TextColumn("Handing off"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as progress:
            bar = progress.add_task("hand-off", total=opts.agents * opts.steps)
            t0 = time.perf_counter()
            runs = run_fleet(
                client,
                self.thread_ids,
                opts.steps,
                think_s=opts.think_ms / 1000,
                advance=lambda: progress.advance(bar),
            )
            t_handed = time.perf_counter()
        for run in runs:
            if run.error is not None:
                raise run.error
        client.flush(opts.timeout)
        t_durable = time.perf_counter()
        traffic = Traffic.of(client).since(before)
        self.say(
            f"Flushed: every hand-off durable {t_durable - t_handed:.2f} s after the last; "
            f"{traffic.published_snapshots} snapshots published in "
            f"{traffic.published_messages} messages"
        )
        return runs, (t0, t_handed, t_durable), traffic


def _durable(wait: Callable[[float], None], timeout: float) -> bool:
    try:
        wait(timeout)
    except FlushTimeout:
        return False
    return True


def _remove_demo_keys(
    store: RedisCheckpointer, thread_ids: list[str], *, whole_namespace: bool
) -> None:
    """Delete what the demo wrote: its own namespace, or only its threads in a given one."""
    try:
        if whole_namespace:
            store.drop_namespace()
        else:
            store.purge_threads(thread_ids)
    except (redis.exceptions.RedisError, PersistenceError) as exc:
        logger.error("could not remove the demo's keys from %s: %s", store.namespace, exc)


def _remove_demo_queue(settings: Settings) -> None:
    """Delete the demo's queue (and the exchange named after it) from the broker."""
    url, queue = settings.broker.get_secret_value(), settings.queue
    # kombu's keys for a queue on Redis; it expires and sweeps pidbox bindings itself.
    keys = (queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            client = redis.Redis.from_url(url, socket_timeout=5.0)
            try:
                client.unlink(*keys)
            finally:
                client.close()
        elif settings.broker_sentinel is not None:
            # the service and the sentinels are transport options
            config = celery_config(settings)
            with Connection(
                url,
                connect_timeout=5.0,
                transport=config["broker_transport"],
                transport_options=config["broker_transport_options"],
                ssl=config.get("broker_use_ssl", False),
            ) as conn:
                channel: Any = conn.default_channel
                channel.client.unlink(*keys)  # on the primary the sentinels name
        else:
            with Connection(url, connect_timeout=5.0) as conn:
                channel = conn.default_channel
                channel.queue_delete(queue)
                channel.exchange_delete(queue)
    except (redis.exceptions.RedisError, KombuError, OSError) as exc:
        logger.error("could not remove the demo's queue %s: %s", queue, exc)


def _summary(
    runs: list[AgentRun],
    result: Audit,
    traffic: Traffic,
    options: DemoOptions,
    *,
    about: list[tuple[str, str]],
    times: tuple[float, ...],
    listed: int,
    removed: int,
) -> Table:
    table = Table(
        title="agents-persistence demo",
        caption="handed off: save_state() calls; superseded in buffer: replaced by a newer "
        "snapshot of the thread before publishing (buffered mode); published: snapshots the "
        "broker accepted (messages carrying them); persisted: threads holding their last "
        "version; superseded: older versions, in the buffer or in the store. hand-off: wall "
        "time of save_state() in the agent thread (all agents share one interpreter, so the "
        "tail includes their GIL waits); end-to-end rate: published snapshots from the first "
        "hand-off until flush() saw every thread durable",
    )
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        *about,
        ("hand-off mode", options.mode),
        ("agents x steps", f"{options.agents} x {options.steps}"),
        *metric_rows(runs, result, traffic=traffic, times=times),
        ("threads listed", f"{listed}"),
        ("cleanup removed", f"{removed}"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table
