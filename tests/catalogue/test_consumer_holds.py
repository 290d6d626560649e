"""Catalogue, class 7 (consumer side): messages the consumer dead-letters itself, while the
dead-letter list cannot be written.

A message that is no valid task message (an unknown task, no task at all, a body that does
not decode, headers Celery cannot read) is dead-lettered by the worker's consumer before any
task runs, then acked or rejected. If the list cannot be written (its key holds a string,
``WRONGTYPE``, or the store is unreachable after the core's retries), acking or rejecting
would lose the message: the consumer holds it instead, unacknowledged and outside the
prefetch window, for a backoff on its timer; then it publishes a copy (same body bytes,
headers, properties, content type and encoding) to the tail of the queue and acks the
original. Once the list can be written, the copy is dead-lettered once.

Here the consumer is Celery's own, built in-process on kombu's in-memory broker, with a
fakeredis store and a timer fired by hand. Real workers and servers:
``tests/faults/test_dead_letter_unreachable.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from agents_persistence import RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks import PersistenceApp, create_app
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.consumer import DeadLetterConsumer
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError

pytestmark = pytest.mark.unit

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_TASK_BODY = json.dumps([[], {"thread_id": "t"}, _EMBED]).encode()
#: kind -> (body, headers or None, what Celery does once the dead letter is stored)
KINDS: dict[str, tuple[bytes, dict[str, Any] | None, str]] = {
    "unknown-task": (_TASK_BODY, {"task": "agents_persistence.no_such_task"}, "REJECTED"),
    "not-a-task": (b'{"hello": "world"}', None, "REJECTED"),
    "undecodable": (b"{not json", None, "ACK"),
    "bad-header": (_TASK_BODY, {"task": SAVE_TASK, "retries": -1}, "REJECTED"),
}


class Timer:
    """The consumer's timer, fired by hand."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []

    def call_after(
        self, secs: float, fun: Callable[..., Any], args: tuple[Any, ...] = (), **_: Any
    ) -> Any:
        entry = (secs, fun, args)
        self.entries.append(entry)
        return entry

    def cancel(self, entry: Any) -> None:
        self.entries.remove(entry)


@dataclass
class QoS:
    """Celery's prefetch window: how far it was widened."""

    widened: int = 0

    def increment_eventually(self, n: int = 1) -> None:
        self.widened += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.widened -= n


@dataclass
class World:
    """A consumer of ``queue`` on kombu's in-memory broker, its store on fakeredis."""

    app: PersistenceApp
    store: RedisCheckpointer
    server: fakeredis.FakeServer
    consumer: DeadLetterConsumer
    conn: Connection
    queue: Queue
    pushes: list[dict[str, Any]] = field(default_factory=list)

    def publish(
        self,
        body: bytes,
        headers: dict[str, Any] | None,
        *,
        content_type: str = "application/json",
    ) -> None:
        """Publish raw through the queue's own exchange, as a producer would."""
        Producer(self.conn).publish(
            body,
            exchange=self.queue.exchange,
            routing_key=self.queue.routing_key,
            content_type=content_type,
            content_encoding="utf-8",
            headers={"id": uuid.uuid4().hex, "lang": "py", **headers} if headers else {},
            correlation_id="corr-1",
            reply_to="nowhere",
            priority=3,
            expiration=600,
            message_id="msg-1",
        )

    def take(self) -> Any:
        channel: Any = self.conn.default_channel
        message = channel.basic_get(self.queue.name, no_ack=False)
        assert message is not None, "the queue is empty"
        return message

    def deliver(self, message: Any) -> None:
        self.consumer.create_task_handler()(message)

    def fire(self) -> list[float]:
        """Run the held messages' timers (each releases on the next loop turn)."""
        timer: Timer = self.consumer.timer
        entries, timer.entries = timer.entries, []
        for _, fun, args in entries:
            fun(*args)
        self.consumer.perform_pending_operations()
        return [secs for secs, _, _ in entries]

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.app.dead_letters.list(100)

    def break_list(self, cause: str) -> None:
        if cause == "wrongtype":
            self.store.client.set(self.store.keys.dead_letters, "an operator's string")
        else:
            self.server.connected = False

    def fix_list(self, cause: str) -> None:
        if cause == "wrongtype":
            self.store.client.delete(self.store.keys.dead_letters)
        else:
            self.server.connected = True


@pytest.fixture
def world() -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None,
        namespace=f"hold-{tag}",
        queue=f"hold-{tag}",
        task_retry_backoff_max_seconds=2.0,
        visibility_timeout_seconds=60.0,
    )
    server = fakeredis.FakeServer()
    store = RedisCheckpointer(
        fakeredis.FakeRedis(server=server),
        namespace=settings.namespace,
        retry=RetryPolicy(attempts=1, initial_backoff=0.001, max_backoff=0.001, deadline=0.05),
    )
    app = create_app(settings, store=store)
    app.conf.update(broker_url="memory://", broker_transport=None, broker_transport_options={})
    consumer = DeadLetterConsumer(
        lambda request: None,
        init_callback=lambda c: None,
        hostname=f"hold-{tag}@test",
        pool=SimpleNamespace(is_green=False, num_processes=1, flush=None),
        app=app,
        timer=Timer(),
        hub=None,
        controller=SimpleNamespace(use_eventloop=False, semaphore=None),
    )
    queue = Queue(settings.queue, Exchange(settings.queue), routing_key=settings.queue)
    consumer.qos = QoS()
    consumer.task_consumer = SimpleNamespace(queues=[queue])
    pushes: list[dict[str, Any]] = []
    push = app.dead_letters.push

    def counted(entry: dict[str, Any]) -> None:
        pushes.append(entry)
        push(entry)

    app.dead_letters.push = counted  # type: ignore[method-assign]
    with app.connection_for_write() as conn:
        queue(conn.default_channel).declare()
        yield World(app, store, server, consumer, conn, queue, pushes)
    app.close()


@pytest.mark.parametrize("cause", ["wrongtype", "unavailable"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_consumer_holds_a_message_it_cannot_dead_letter(
    world: World, kind: str, cause: str
) -> None:
    """Neither acked nor rejected while the list cannot be written: held outside the
    prefetch window, then a copy goes to the tail of the queue and the original is acked;
    the copy, delivered once the list can be written, is dead-lettered once and only then
    acked or rejected as Celery does."""
    body, headers, then = KINDS[kind]
    world.break_list(cause)
    world.publish(body, headers)
    original = world.take()

    world.deliver(original)

    assert original._state == "RECEIVED"  # neither acked nor rejected: the broker has it
    assert world.consumer.qos.widened == 1  # good messages keep arriving meanwhile
    world.publish(b'{"next": 1}', None)  # queued behind the original
    [delay] = world.fire()
    assert 0.5 <= delay <= 1.0  # the first hold: the task backoff's first countdown
    assert original._state == "ACK"  # only once the copy was published
    assert world.consumer.qos.widened == 0
    assert world.take().body == b'{"next": 1}'  # the copy went to the tail
    copy = world.take()
    assert (copy.body, copy.headers, copy.content_type, copy.content_encoding) == (
        original.body,
        original.headers,
        original.content_type,
        original.content_encoding,
    )
    same = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration", "message_id")
    assert original.properties["expiration"] == "600000"  # milliseconds, as AMQP has it
    assert {k: copy.properties.get(k) for k in same} == {
        k: original.properties.get(k) for k in same
    }
    assert copy.delivery_info["routing_key"] == world.queue.name

    world.fix_list(cause)
    world.consumer._pushes_paused_until = 0.0  # the backoff has passed
    world.deliver(copy)

    assert copy._state == then
    [entry] = world.dead_letters()
    assert entry["body_base64"], entry
    assert world.consumer.timer.entries == []


def test_consumer_does_not_try_the_list_again_within_its_backoff(world: World) -> None:
    """A second message within the backoff is held without another attempt at the list,
    until the backoff ends: a queue of such messages does not spin on the store."""
    world.break_list("wrongtype")
    body, headers, _ = KINDS["unknown-task"]
    world.publish(body, headers)
    world.publish(body, headers)
    first, second = world.take(), world.take()

    world.deliver(first)
    world.deliver(second)

    assert len(world.pushes) == 1
    assert (first._state, second._state) == ("RECEIVED", "RECEIVED")
    delays = world.fire()
    assert len(delays) == 2
    assert delays[1] <= delays[0]  # the second waits out what is left of the first's
    assert (first._state, second._state) == ("ACK", "ACK")


def test_consumer_gives_a_held_message_back_if_it_cannot_copy_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise OperationalError("broker gone")

    world.break_list("wrongtype")
    body, headers, _ = KINDS["not-a-task"]
    world.publish(body, headers)
    original = world.take()
    world.deliver(original)
    monkeypatch.setattr(Producer, "publish", refuse)

    world.fire()

    assert original._state == "REJECTED"  # after the hold (the timer), never acked
    assert world.take().body == original.body  # requeued: the broker has it again
    assert world.consumer.qos.widened == 0


def test_a_closed_connection_forgets_held_messages(world: World) -> None:
    """The broker delivers them again (they were never acked): nothing is released on the
    old channel, and the prefetch window is the new connection's own."""
    world.break_list("unavailable")
    body, headers, _ = KINDS["undecodable"]
    world.publish(body, headers)
    original = world.take()
    world.deliver(original)

    world.consumer.on_close()

    assert world.consumer.timer.entries == []
    assert original._state == "RECEIVED"
