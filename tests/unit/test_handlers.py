"""The worker's decisions, exit by exit: a message is acked only once its outcome is durable.

Each message is delivered as a worker delivers it, without a worker process: Celery's own
message (``app.amqp.as_task_v2``, JSON-encoded) in a kombu :class:`~kombu.message.Message`
on a channel that records acks and rejects, the task's request class
(:class:`GiveBackRequest`) specialised by ``create_request_cls`` as the worker's strategy
does, and the pool's job (``trace_task_ret``) run in this process by an inline pool, which
then calls the request back. The store is a :class:`RedisCheckpointer` over fakeredis, taken
"down" by disconnecting its fake server; the broker is kombu's ``memory://`` transport, so a
published retry can be read back with its headers.

Real time limits and real redeliveries are proved by the fault suite's worker processes
(``tests/faults/test_outages.py``); this module pins each decision on its own.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from agents_persistence.codec import Codec
from agents_persistence.config.settings import Settings
from agents_persistence.errors import StoreUnavailable
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.protocol.messages import batch_message, save_entry, save_message
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker import handlers
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from agents_persistence.tasks.worker.handlers import GiveBackRequest, PersistenceTask
from billiard.einfo import ExceptionInfo
from celery.canvas import Signature
from celery.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from celery.utils.imports import symbol_by_name
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.serialization import dumps

from tests.support import sample_state

pytestmark = pytest.mark.unit

#: More than Celery's own default of 3, so a retry past the third proves the bound is ours.
MAX_RETRIES = 8
#: The pause before a message is given back, shortened so the tests stay fast.
PAUSE = 0.05
#: What the worker's strategy builds its request class with (untyped in celery-types).
create_request_cls: Any = symbol_by_name("celery.worker.request:create_request_cls")


class Channel:
    """Records what the worker does with a message: ``acks`` and ``rejects`` (requeue flags)."""

    no_ack_consumers = None

    def __init__(self) -> None:
        self.acks: list[str] = []
        self.rejects: list[bool] = []

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        self.acks.append(delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.rejects.append(requeue)

    @property
    def given_back(self) -> bool:
        """Rejected with requeue exactly once, and never acknowledged."""
        return self.rejects == [True] and self.acks == []

    @property
    def acked(self) -> bool:
        """Acknowledged exactly once, and never rejected."""
        return len(self.acks) == 1 and self.rejects == []


class InlinePool:
    """Runs the pool's job in this process, as a prefork child would, then calls back with
    the result pickled and unpickled, as it crosses from the child to the main process (an
    exception arrives bare there, not wrapped in ``ExceptionWithTraceback``)."""

    def __init__(self, app: PersistenceApp) -> None:
        self.app = app

    def apply_async(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        accept_callback: Callable[..., Any] | None = None,
        callback: Callable[[Any], Any] | None = None,
        **_: Any,
    ) -> None:
        if accept_callback is not None:
            accept_callback(os.getpid(), time.monotonic())
        result = pickle.loads(pickle.dumps(target(*args, app=self.app)))
        assert callback is not None
        callback(result)


@dataclass
class World:
    """One test's app, store (over a fake server that can go down) and published retries."""

    app: PersistenceApp
    store: RedisCheckpointer
    server: fakeredis.FakeServer
    settings: Settings
    calls: list[str] = field(default_factory=list)

    def request(self, name: str, kwargs: dict[str, Any], *, retries: int = 0) -> Any:
        """The worker's request for a new message of task ``name``, on a fresh channel."""
        task = self.app.tasks[name]
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            uuid.uuid4().hex, name, kwargs=kwargs, retries=retries
        )
        content_type, encoding, data = dumps(body, serializer="json")
        channel = Channel()
        message = Message(
            body=data, delivery_tag="1", content_type=content_type, content_encoding=encoding,
            headers=headers, properties=properties, channel=channel,
        )  # fmt: skip
        request_cls = create_request_cls(
            symbol_by_name(task.Request), task, InlinePool(self.app), "test@host", None,
            app=self.app,
        )  # fmt: skip
        request = request_cls(
            message, on_ack=message.ack_log_error, on_reject=message.reject_log_error,
            app=self.app, task=task,
        )  # fmt: skip
        request.channel = channel
        return request

    def deliver(self, name: str, kwargs: dict[str, Any], *, retries: int = 0) -> Channel:
        """Run one delivery to its end; returns the channel with the worker's decision."""
        request = self.request(name, kwargs, retries=retries)
        request.execute_using_pool(InlinePool(self.app))
        channel: Channel = request.channel
        return channel

    def save_kwargs(self, thread_id: str, version: int) -> dict[str, Any]:
        save = self.store.prepare(thread_id, sample_state(f"{thread_id}@{version}"),
                                  version=version)  # fmt: skip
        return save_message(self.store.namespace, save)

    def published(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(headers, kwargs) of the messages published to the queue (retries), drained."""
        found: list[tuple[dict[str, Any], dict[str, Any]]] = []
        with (
            self.app.connection_for_read() as conn,
            conn.SimpleQueue(self.settings.queue, no_ack=True) as queue,
        ):
            while True:
                try:
                    message = queue.get(timeout=0.05)
                    found.append((dict(message.headers), message.payload[1]))
                except queue.Empty:
                    return found

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter list (the store is brought back up to read it)."""
        self.server.connected = True
        return self.app.dead_letters.list()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(handlers, "_REQUEUE_PAUSE", PAUSE)
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None, eager=False, broker_url="memory://", namespace=f"h-{tag}",
        queue=f"h-{tag}", task_max_retries=MAX_RETRIES, retry_attempts=1,
        retry_initial_backoff_seconds=0.001, retry_max_backoff_seconds=0.001,
        retry_deadline_seconds=0.05,
    )  # fmt: skip
    server = fakeredis.FakeServer()
    store = RedisCheckpointer(
        fakeredis.FakeRedis(server=server),
        namespace=settings.namespace,
        codec=Codec(max_snapshot_bytes=settings.max_snapshot_bytes),
        retry=RetryPolicy(attempts=1, initial_backoff=0.001, max_backoff=0.001, deadline=0.05),
    )
    app = create_app(settings, store=store)
    try:
        yield World(app, store, server, settings)
    finally:
        server.connected = True
        app.close()
        store.close()


def _fail_writes(monkeypatch: pytest.MonkeyPatch, store: RedisCheckpointer,
                 exc: BaseException) -> None:  # fmt: skip
    def save_many(*_: Any, **__: Any) -> Any:
        raise exc

    monkeypatch.setattr(store, "save_many", save_many)


# -- the store is unavailable -------------------------------------------------------------------
@pytest.mark.parametrize("retries", [0, 3, 4, MAX_RETRIES - 1])
def test_store_unavailable_with_retries_left_publishes_a_retry(world: World, retries: int) -> None:
    world.server.connected = False

    channel = world.deliver(SAVE_TASK, world.save_kwargs("t-1", 5), retries=retries)

    assert channel.acked  # the retry is in the broker: this message's outcome is durable
    [(headers, retried)] = world.published()
    assert headers["retries"] == retries + 1
    assert headers["eta"] is not None
    assert retried["thread_id"] == "t-1"
    # Passed explicitly: Celery's max_retries=None would mean its own default, 3.
    assert getattr(world.app.tasks[SAVE_TASK], "override_max_retries", None) == MAX_RETRIES
    assert world.dead_letters() == []


def test_retries_exhausted_are_dead_lettered_and_acked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_writes(monkeypatch, world.store, StoreUnavailable("down"))

    channel = world.deliver(SAVE_TASK, world.save_kwargs("t-1", 5), retries=MAX_RETRIES)

    assert channel.acked
    assert world.published() == []
    [entry] = world.dead_letters()
    assert entry["exhausted"] is True
    assert entry["error"] == "StoreUnavailable"
    assert (entry["kwargs"]["thread_id"], entry["kwargs"]["version"]) == ("t-1", 5)
    assert entry["retries"] == MAX_RETRIES


def test_a_retry_that_cannot_be_published_is_given_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.server.connected = False

    def refuse(*_: Any, **__: Any) -> Any:
        raise OperationalError("broker gone")

    monkeypatch.setattr(Signature, "apply_async", refuse)
    began = time.monotonic()

    channel = world.deliver(SAVE_TASK, world.save_kwargs("t-1", 5), retries=2)

    assert channel.given_back  # Celery alone would reject it without requeue: dropped
    assert time.monotonic() - began >= PAUSE  # not given straight back to a spinning loop
    assert world.dead_letters() == []


def test_an_unreachable_dead_letter_list_gives_the_message_back(world: World) -> None:
    world.server.connected = False
    kwargs = world.save_kwargs("t-1", 5)

    channel = world.deliver(SAVE_TASK, kwargs, retries=MAX_RETRIES)

    assert channel.given_back
    assert world.published() == []
    # The redelivery tries the write first: once the store is back, it is stored.
    world.server.connected = True
    assert world.deliver(SAVE_TASK, kwargs, retries=MAX_RETRIES).acked
    assert world.store.stored_versions(["t-1"]) == {"t-1": 5}
    assert world.dead_letters() == []


# -- unexpected errors and time limits ---------------------------------------------------------
def test_an_unexpected_error_is_dead_lettered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_writes(monkeypatch, world.store, RuntimeError("a bug"))

    channel = world.deliver(SAVE_TASK, world.save_kwargs("t-1", 5))

    assert channel.acked
    [entry] = world.dead_letters()
    assert (entry["error"], entry["unexpected"]) == ("RuntimeError", True)
    assert entry["kwargs"]["version"] == 5


def test_an_unexpected_error_without_a_dead_letter_list_is_given_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_writes(monkeypatch, world.store, RuntimeError("a bug"))
    world.server.connected = False

    assert world.deliver(SAVE_TASK, world.save_kwargs("t-1", 5)).given_back


@pytest.mark.parametrize("name", [SAVE_TASK, SAVE_BATCH_TASK])
def test_the_soft_time_limit_takes_the_retry_path(
    world: World, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _fail_writes(monkeypatch, world.store, SoftTimeLimitExceeded())
    kwargs = world.save_kwargs("t-1", 5)
    if name == SAVE_BATCH_TASK:
        save = world.store.prepare("t-1", sample_state("t-1@5"), version=5)
        kwargs = batch_message(world.store.namespace, [save])

    assert world.deliver(name, kwargs, retries=4).acked
    [(headers, _)] = world.published()
    assert headers["retries"] == 5
    assert world.dead_letters() == []
    # ...and when no retry is left, the dead letter.
    assert world.deliver(name, kwargs, retries=MAX_RETRIES).acked
    [entry] = world.dead_letters()
    assert entry["error"] == "SoftTimeLimitExceeded"


def test_a_batch_retry_carries_only_the_valid_entries(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad entry is dead-lettered once, before the write; the retry leaves it out, whether
    the store was unavailable or the soft time limit interrupted the write."""
    good = save_entry(world.store.prepare("t-1", sample_state("t-1@5"), version=5))
    bad = {**good, "thread_id": "t-2", "version": -1}
    kwargs = {"namespace": world.store.namespace, "entries": [good, bad]}
    for exc in (StoreUnavailable("down"), SoftTimeLimitExceeded()):
        _fail_writes(monkeypatch, world.store, exc)

        assert world.deliver(SAVE_BATCH_TASK, kwargs, retries=1).acked

        [(_, retried)] = world.published()
        assert [e["thread_id"] for e in retried["entries"]] == ["t-1"], exc
        entries = world.dead_letters()
        assert [e["kwargs"]["thread_id"] for e in entries] == ["t-2"], exc
        world.app.dead_letters.purge()


def test_an_error_escaping_a_task_gives_the_message_back(world: World) -> None:
    """GiveBackRequest: whatever escapes the task body undecided is requeued, not acked
    (Celery's own Request would ack it with acks_on_failure, or drop it)."""

    @world.app.task(name="test.escapes", base=PersistenceTask, bind=True)
    def escapes(self: PersistenceTask) -> None:
        raise RuntimeError("escaped")

    assert world.deliver("test.escapes", {}).given_back

    request = world.request(SAVE_TASK, world.save_kwargs("t-1", 5))
    request.on_failure(_exc_info(RuntimeError("in Celery's own call")))
    assert request.channel.given_back

    # A task an operator terminated (revoke --terminate) keeps Celery's handling: revoked
    # means discarded, so the message is acked, not requeued.
    terminated = world.request(SAVE_TASK, world.save_kwargs("t-1", 5))
    terminated.on_failure(_exc_info(Terminated(15)))
    assert terminated.channel.acked


def test_a_hard_time_limit_gives_the_message_back(world: World) -> None:
    """billiard reports a hard time limit twice: the job's error callback with
    TimeLimitExceeded, then the timeout callback. The message is requeued once, never acked."""
    task = world.app.tasks[SAVE_TASK]
    assert (task.acks_late, getattr(task, "acks_on_timeout", None)) == (True, False)
    assert world.app.conf.task_acks_on_failure_or_timeout is False

    request = world.request(SAVE_TASK, world.save_kwargs("t-1", 5))
    request.on_accepted(os.getpid(), time.monotonic())
    request.on_failure(_exc_info(TimeLimitExceeded(30.0)))
    request.on_timeout(soft=False, timeout=30.0)
    assert request.channel.given_back

    alone = world.request(SAVE_TASK, world.save_kwargs("t-1", 5))
    alone.on_accepted(os.getpid(), time.monotonic())
    alone.on_timeout(soft=False, timeout=30.0)
    assert alone.channel.given_back


def test_the_request_class_is_the_give_back_one(world: World) -> None:
    for name in (SAVE_TASK, SAVE_BATCH_TASK):
        assert symbol_by_name(world.app.tasks[name].Request) is GiveBackRequest


def _exc_info(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()
