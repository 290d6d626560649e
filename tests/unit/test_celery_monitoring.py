"""The options that let Celery's own tools see the workers, on every broker."""

from __future__ import annotations

import pytest
from agents_persistence.config import Settings
from agents_persistence.tasks import create_app
from agents_persistence.tasks.worker.app import celery_config

pytestmark = pytest.mark.unit

BROKERS = [
    "redis://127.0.0.1:6379/1",
    "rediss://127.0.0.1:6380/1",
    "amqp://guest:guest@127.0.0.1:5672//",
]


@pytest.mark.parametrize("broker", BROKERS)
def test_remote_control_and_task_events_on_every_broker(broker: str) -> None:
    conf = celery_config(Settings(_env_file=None, broker_url=broker))
    assert conf["worker_enable_remote_control"] is True
    assert conf["worker_send_task_events"] is True
    # Hand-offs publish through TaskSender, which sends no task-sent event: say so.
    assert conf["task_send_sent_event"] is False


@pytest.mark.parametrize("broker", BROKERS)
def test_events_and_everything_else_stay_json(broker: str) -> None:
    conf = celery_config(Settings(_env_file=None, broker_url=broker))
    assert conf["event_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"


def test_the_event_dispatcher_encodes_json() -> None:
    app = create_app(Settings(_env_file=None))
    try:
        dispatcher = app.events.Dispatcher(enabled=False)
        assert dispatcher.serializer == "json"
        assert app.conf.accept_content == ["json"]
    finally:
        app.close()
