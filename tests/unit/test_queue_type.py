"""``queue_type``: classic or quorum RabbitMQ queues, refused on other brokers; what the
Celery app declares for each, how retries are routed, and RabbitMQ's refusal as a typed
error. Nothing here connects (publishes are captured before they reach a broker)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import kombu
import pytest
from agents_persistence import BrokerMisconfigured, HandOffError
from agents_persistence.config import Settings
from agents_persistence.tasks.broker.queues import (
    QUORUM_DELIVERY_LIMIT,
    SWITCH_FIX,
    mismatch,
    routing_key_for,
)
from agents_persistence.tasks.client.sender import TaskSender
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.app import celery_config, create_app
from amqp.exceptions import NotFound, PreconditionFailed
from celery.utils.quorum_queues import detect_quorum_queues
from pydantic import ValidationError

pytestmark = pytest.mark.unit

SECRET = "hunter2-s3cret"
AMQP = f"amqp://agent:{SECRET}@rabbit.example:5672//"


def quorum(**fields: Any) -> Settings:
    return Settings(_env_file=None, queue_type="quorum", broker_url=AMQP, **fields)


# -- settings ---------------------------------------------------------------------------------
def test_classic_by_default_and_quorum_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(_env_file=None).queue_type == "classic"
    monkeypatch.setenv("AGENTS_PERSISTENCE_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("AGENTS_PERSISTENCE_BROKER_URL", AMQP)
    assert Settings(_env_file=None).queue_type == "quorum"


@pytest.mark.parametrize("scheme", ["amqp", "amqps", "pyamqp"])
def test_quorum_on_every_rabbitmq_scheme(scheme: str) -> None:
    url = f"{scheme}://agent:{SECRET}@rabbit.example:5672//"
    assert Settings(_env_file=None, queue_type="quorum", broker_url=url).queue_type == "quorum"


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="queue_type"):
        Settings(_env_file=None, queue_type="stream", broker_url=AMQP)


@pytest.mark.parametrize(
    "broker",
    [None, f"redis://:{SECRET}@broker.example:6379/1", "rediss://b.example:6380/0", "memory://"],
)
def test_quorum_on_another_broker_is_refused_clearly(broker: str | None) -> None:
    """The default broker is the store's Redis: quorum needs RabbitMQ, set explicitly."""
    fields: dict[str, Any] = {"redis_url": f"redis://:{SECRET}@store.example:6379/0"}
    if broker is not None:
        fields["broker_url"] = broker
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, queue_type="quorum", **fields)
    text = str(info.value)
    assert "queue_type quorum needs a RabbitMQ broker (amqp:// or amqps://)" in text
    assert SECRET not in text
    assert SECRET not in info.value.json()


def test_quorum_keeps_the_defaults_valid_and_rebuilds_from_its_dump() -> None:
    settings = quorum()
    assert celery_config(settings)["task_time_limit"] == settings.task_time_limit_seconds
    assert Settings(**settings.model_dump()) == settings


# -- what the app declares --------------------------------------------------------------------
def test_classic_is_celerys_own_declaration() -> None:
    config = celery_config(Settings(_env_file=None, broker_url=AMQP, queue="jobs"))
    assert "task_queues" not in config
    assert config["task_default_queue"] == config["task_default_routing_key"] == "jobs"
    assert config["broker_transport_options"]["confirm_publish"] is True
    app = create_app(Settings(_env_file=None, broker_url=AMQP, queue="jobs"))
    assert app.amqp.queues["jobs"].queue_arguments is None
    assert detect_quorum_queues(app, "amqp") == (False, "")


def test_quorum_declares_a_replicated_queue_without_a_delivery_limit() -> None:
    settings = quorum(queue="jobs.eu")
    config = celery_config(settings)
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_native_delayed_delivery_queue_type"] == "quorum"
    app = create_app(settings)
    queue = app.amqp.queues["jobs.eu"]
    assert queue.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
    }
    assert queue.durable
    assert not queue.auto_delete
    assert not queue.exclusive
    assert (queue.exchange.name, queue.exchange.type) == ("jobs.eu.quorum", "topic")
    assert queue.routing_key == routing_key_for("jobs.eu")
    assert detect_quorum_queues(app, "amqp") == (True, "jobs.eu")
    # Beat's cleanup goes to the same queue.
    assert config["beat_schedule"]["agents_persistence.cleanup_expired"]["options"] == {
        "queue": "jobs.eu",
        "expires": settings.cleanup_interval_seconds,
    }


def test_routing_keys_are_one_word_and_never_a_suffix_of_another_queues() -> None:
    """A delayed message's key is ``<28 bits>.<key>``; the topic bindings are ``#.<key>``:
    with keys of one word, queue ``b``'s binding cannot match a retry of queue ``a.b``."""
    names = [
        "b",
        "a.b",
        "a_b",
        "agents_persistence",
        "agents_persistence.agents",
        "*#.x",
        "q" * 200,
    ]
    keys = [routing_key_for(name) for name in names]
    assert len(set(keys)) == len(names)
    for key in keys:
        assert not set(key) & {".", "*", "#"}
        assert len(key) <= 81
    assert routing_key_for("a.b") == routing_key_for("a.b")  # stable across processes


def _published(app: Any, **options: Any) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []
    with mock.patch.object(
        kombu.Producer, "publish", lambda _producer, _body, **o: seen.append(o)
    ):
        app.send_task(SAVE_TASK, kwargs={}, queue=app.settings.queue, **options)
    (sent,) = seen
    return sent


def test_a_countdown_below_a_second_waits_a_second_on_quorum_only() -> None:
    """Celery's delayed delivery refuses a countdown below one second (ValueError at
    publish): the worker's countdowns on a quorum queue are at least a second."""
    from agents_persistence.tasks.broker.queues import broker_countdown

    app = create_app(quorum(queue="a.b"))
    assert [broker_countdown(app.settings, c) for c in (0.0, 0.5, 0.999, 1.0, 7.5)] == [
        0.0, 1.0, 1.0, 1.0, 7.5,
    ]  # fmt: skip
    classic = Settings(_env_file=None)
    assert broker_countdown(classic, 0.5) == 0.5
    with pytest.raises(ValueError, match="countdown must be a positive number"):
        _published(app, countdown=0.5)  # why: Celery itself would not publish it
    assert _published(app, countdown=broker_countdown(app.settings, 0.5))["routing_key"]


def test_a_countdown_waits_in_the_brokers_delayed_queues() -> None:
    """Celery's native delayed delivery: a retry's countdown is spelled in the routing key
    and the message waits in RabbitMQ (celery_delayed_*), not in a worker."""
    app = create_app(quorum(queue="a.b"))
    key = routing_key_for("a.b")
    now = _published(app)
    assert (now["exchange"], now["routing_key"]) == ("a.b.quorum", key)
    later = _published(app, countdown=5)
    assert later["exchange"].name == "celery_delayed_27"
    bits, _, rest = later["routing_key"].rpartition(".")
    assert rest == key
    assert int(bits.replace(".", ""), 2) == 5


# -- RabbitMQ's refusal -----------------------------------------------------------------------
REFUSAL = (
    "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs' in vhost '/': "
    "received the value 'quorum' of type 'longstr' but current is none"
)


def test_the_refusal_of_a_declaration_is_recognised() -> None:
    assert mismatch(PreconditionFailed(REFUSAL, method_sig=(50, 10)))
    assert not mismatch(PreconditionFailed("PRECONDITION_FAILED - unknown delivery tag 3"))
    assert not mismatch(NotFound("NOT_FOUND - no exchange 'x'"))
    assert not mismatch(OSError(REFUSAL))


def test_a_hand_off_refused_by_the_queue_declaration_is_a_typed_error() -> None:
    app = create_app(quorum(queue="jobs"))
    sender = TaskSender(app, "jobs", {"max_retries": 0})
    refusal = PreconditionFailed(REFUSAL, method_sig=(50, 10))
    with (
        mock.patch.object(TaskSender, "_send", side_effect=refusal),
        pytest.raises(BrokerMisconfigured) as info,
    ):
        sender.send(SAVE_TASK, {}, "{}")
    assert isinstance(info.value, HandOffError)
    assert info.value.queue == "jobs"
    assert "current is none" in str(info.value)
    assert SWITCH_FIX in str(info.value)
    assert info.value.__cause__ is refusal
    # Any other broker error is left as it was (the client's retry and write-through see it).
    with (
        mock.patch.object(TaskSender, "_send", side_effect=OSError("down")),
        pytest.raises(OSError, match="down"),
    ):
        sender.send(SAVE_TASK, {}, "{}")
