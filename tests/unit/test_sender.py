"""TaskSender publishes exactly what ``app.send_task`` publishes for the same call.

Both paths publish to an in-memory broker; the messages are then read back as the broker
holds them (headers, properties, content type, decoded body) and the ``task-sent`` events
are captured, so a Celery upgrade that changes the message cannot make them diverge
silently. Only what differs per message (task ids, event clocks and times) is normalised.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import kombu
import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.tasks.client.sender import TaskSender
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from celery import signals

pytestmark = pytest.mark.unit

Captured = dict[str, Any]


@pytest.fixture
def app() -> Iterator[PersistenceApp]:
    queue = f"t-sender-{uuid.uuid4().hex[:8]}"
    app = create_app(Settings(_env_file=None, broker_url="memory://", queue=queue))
    try:
        yield app
    finally:
        app.close()


def _publish(
    app: PersistenceApp, send: str, kwargs: dict[str, Any], kwargsrepr: str
) -> tuple[Captured, list[Captured]]:
    """Send once (``send``: ``lean`` or ``send_task``); the message as the broker holds it and
    the events published with it."""
    events: list[Captured] = []
    publish = kombu.Producer.publish

    def spy(producer: kombu.Producer, body: Any, **options: Any) -> Any:
        if options.get("exchange") == "celeryev":
            events.append({"body": dict(body), "options": options})
        return publish(producer, body, **options)

    sender = TaskSender(app, app.settings.queue, {"max_retries": 2}, timeout=3.0)
    with mock.patch.object(kombu.Producer, "publish", spy):
        if send == "lean":
            sender.send(SAVE_TASK, kwargs, kwargsrepr)
        elif send == "held":  # twice: the second send reuses the producer and bound queue
            with sender.holding_producer():
                sender.send(SAVE_TASK, {"first": True}, kwargsrepr)
                _take_one(app)
                sender.send(SAVE_TASK, kwargs, kwargsrepr)
            events[:] = events[1:]
        else:
            sender._send_task(SAVE_TASK, kwargs, kwargsrepr)
    message = _take_one(app)
    return _normalised(message), [_normalised_event(e) for e in events]


def _take_one(app: PersistenceApp) -> Any:
    """The one message in the queue (taken)."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        message = channel.basic_get(app.settings.queue, no_ack=True)
        assert message is not None, "nothing was published"
        assert channel.basic_get(app.settings.queue, no_ack=True) is None
    return message


def _normalised(message: Any) -> Captured:
    task_id = message.headers["id"]
    properties = {k: v for k, v in message.properties.items() if k != "delivery_tag"}
    return {
        "headers": {**message.headers, "id": "ID", "root_id": _same(message.headers, task_id)},
        "properties": {
            **properties,
            "correlation_id": _same(properties, task_id, "correlation_id"),
        },
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "body": message.decode(),
        "delivery_info": message.delivery_info,
    }


def _same(fields: dict[str, Any], task_id: str, key: str = "root_id") -> str:
    assert fields[key] == task_id
    return "ID"


def _normalised_event(event: Captured) -> Captured:
    body = dict(event["body"])
    assert body["uuid"] == body["root_id"]
    for varying in ("uuid", "root_id", "clock", "timestamp"):
        body[varying] = varying.upper()
    options = {k: v for k, v in event["options"].items() if k != "declare"}
    options["declare"] = [str(d) for d in event["options"].get("declare") or ()]
    return {"body": body, "options": options}


_CALLS = [
    pytest.param({"namespace": "ns", "thread_id": "t-1", "version": 7, "state": "{}"}, id="small"),
    pytest.param(
        {
            "namespace": "ns",
            "thread_id": "t-ü",
            "version": 2**62,
            "state": '{"files":{"a.txt":"x\\"y\\u2028 ✓"},"scratchpad":{"n":[1,2.5,null]}}',
        },
        id="nested-json-unicode",
    ),
    pytest.param(
        {"namespace": "ns", "saves": [{"thread_id": f"t{i}", "version": i} for i in range(3)]},
        id="batch",
    ),
]


@pytest.mark.parametrize("kwargs", _CALLS)
def test_the_lean_path_publishes_what_send_task_publishes(
    app: PersistenceApp, kwargs: dict[str, Any]
) -> None:
    kwargsrepr = f"{{'namespace': 'ns', ...}} ({len(str(kwargs))} chars)"
    reference, reference_events = _publish(app, "send_task", kwargs, kwargsrepr)
    for send in ("lean", "held"):
        lean, lean_events = _publish(app, send, kwargs, kwargsrepr)
        assert lean == reference, send
        assert lean_events == reference_events, send
    assert lean["body"] == [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                         "chord": None}]  # fmt: skip


@pytest.mark.parametrize("sent_event", [True, False])
def test_sent_events_follow_the_setting_on_both_paths(
    app: PersistenceApp, sent_event: bool
) -> None:
    app.conf.task_send_sent_event = sent_event
    kwargs = {"namespace": "ns", "thread_id": "t", "version": 1, "state": "{}"}
    for send in ("send_task", "lean"):
        _, events = _publish(app, send, kwargs, "{...}")
        assert [e["body"]["type"] for e in events] == (["task-sent"] if sent_event else [])


def test_a_publish_hook_gets_send_task_itself(app: PersistenceApp) -> None:
    seen: list[Any] = []

    def hook(sender: str, body: Any, **extra: Any) -> None:
        seen.append(body)

    signals.before_task_publish.connect(hook)
    try:
        kwargs = {"namespace": "ns", "thread_id": "t", "version": 1, "state": "{}"}
        message, _ = _publish(app, "lean", kwargs, "{...}")
    finally:
        signals.before_task_publish.disconnect(hook)
    assert len(seen) == 1
    assert isinstance(seen[0], tuple), "hooks see the body as send_task gives it"
    assert message["body"][1] == kwargs


def test_what_orjson_refuses_goes_through_send_task(app: PersistenceApp) -> None:
    kwargs = {"namespace": "ns", "thread_id": "t", "version": 1, "state": '{"x":"\udc80"}'}
    with mock.patch.object(TaskSender, "_send_task", autospec=True) as fallback:
        TaskSender(app, app.settings.queue, {}).send(SAVE_TASK, kwargs, "{...}")
    fallback.assert_called_once()


def _queued(app: PersistenceApp) -> list[Any]:
    """The kwargs of every message in the queue, oldest first (taking them)."""
    found = []
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        while (message := channel.basic_get(app.settings.queue, no_ack=True)) is not None:
            found.append(message.decode()[1])
    return found


def test_a_thread_holding_a_producer_takes_one_from_the_pool_once(app: PersistenceApp) -> None:
    sender = TaskSender(app, app.settings.queue, {"max_retries": 0}, timeout=3.0)
    pool = app.producer_pool
    with (
        mock.patch.object(
            type(pool), "acquire", autospec=True, side_effect=type(pool).acquire
        ) as acquire,
        mock.patch.object(
            kombu.Queue, "bind", autospec=True, side_effect=kombu.Queue.bind
        ) as bind,
    ):
        with sender.holding_producer():
            for i in range(3):
                sender.send(SAVE_TASK, {"i": i}, "{...}")
            assert acquire.call_count == 1
            assert bind.call_count == 1  # the queue bound to its channel once, not per send
        sender.send(SAVE_TASK, {"i": 3}, "{...}")  # not holding: one per send again
        assert acquire.call_count == 2
    assert _queued(app) == [{"i": i} for i in range(4)]


def test_a_failed_send_gives_the_held_producer_back(app: PersistenceApp) -> None:
    sender = TaskSender(app, app.settings.queue, {"max_retries": 0}, timeout=3.0)
    pool = app.producer_pool
    released: list[Any] = []
    real_release = type(pool).release

    def release(self: Any, resource: Any) -> None:
        released.append(resource)
        real_release(self, resource)

    send_task_message = app.amqp.send_task_message
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("broker went away")
        return send_task_message(*args, **kwargs)

    with (
        mock.patch.object(type(pool), "release", release),
        mock.patch.object(app.amqp, "send_task_message", flaky),
    ):
        with sender.holding_producer():
            sender.send(SAVE_TASK, {"i": 0}, "{...}")
            first = sender._held.producer
            with pytest.raises(ConnectionError):
                sender.send(SAVE_TASK, {"i": 1}, "{...}")
            assert released == [first]  # given back at once, not kept
            sender.send(SAVE_TASK, {"i": 2}, "{...}")  # a fresh one from the pool
            assert len(released) == 1
        assert len(released) == 2  # and given back when the block ends
    assert _queued(app) == [{"i": 0}, {"i": 2}]


@pytest.mark.timeout(60)  # held, the one producer (and connection) would never come back
def test_a_pool_of_one_producer_is_never_held(app: PersistenceApp) -> None:
    app.conf.broker_pool_limit = 1
    sender = TaskSender(app, app.settings.queue, {"max_retries": 0}, timeout=3.0)
    with sender.holding_producer():
        sender.send(SAVE_TASK, {"i": 0}, "{...}")
        with app.producer_or_acquire() as producer:  # another thread could take it
            assert producer is not None
        sender.send(SAVE_TASK, {"i": 1}, "{...}")
    assert _queued(app) == [{"i": 0}, {"i": 1}]
