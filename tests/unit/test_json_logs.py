"""AGENTS_PERSISTENCE_LOG_FORMAT=json: one JSON object per line, with the task, thread id,
version and outcome as fields where the line knows them."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.tasks.worker.app import create_app
from agents_persistence.tasks.worker.logs import JsonFormatter
from celery import signals

pytestmark = pytest.mark.unit


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_celerys_task_line_carries_thread_version_and_outcome() -> None:
    data = {
        "id": "abc-1",
        "name": "agents_persistence.save_state",
        "return_value": "{'outcome': 'written', 'version': 42}",
        "runtime": 0.0012,
        "args": "()",
        "kwargs": "{'namespace': 'agents', 'thread_id': 'it\\'s-1', 'version': 42, "
        "'state': <4096 bytes of JSON>, 'saved_at_ms': 1}",
    }
    rec = record("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s", data)
    rec.data = data
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"].startswith("Task agents_persistence.save_state[abc-1] succeeded")
    assert out["task"] == "agents_persistence.save_state"
    assert out["task_id"] == "abc-1"
    assert out["outcome"] == "written"
    assert out["version"] == 42
    assert out["thread_id"] == "it\\'s-1"
    assert out["level"] == "INFO"
    assert out["runtime"] == pytest.approx(0.0012)


def test_extra_fields_and_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = record("dead-lettered %s", "x", thread_id="t-9", version=7, outcome="failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert len(line.splitlines()) == 1
    out = json.loads(line)
    assert (out["thread_id"], out["version"], out["outcome"]) == ("t-9", 7, "failed")
    assert "ValueError: bad" in out["exc"]


def test_a_json_app_formats_the_handlers_celery_sets_up() -> None:
    app = create_app(Settings(_env_file=None, log_format="json", broker_url="memory://"))
    logger = logging.getLogger(f"test-json-{id(app)}")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        signals.after_setup_logger.send(sender=None, logger=logger)
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        logger.removeHandler(handler)
        uid = f"agents_persistence.logs:{id(app)}"
        signals.after_setup_logger.disconnect(dispatch_uid=uid)
        signals.after_setup_task_logger.disconnect(dispatch_uid=uid + ":task")
        app.close()


def test_the_text_format_leaves_handlers_alone() -> None:
    before = len(signals.after_setup_logger.receivers)
    app = create_app(Settings(_env_file=None, broker_url="memory://"))
    try:
        assert len(signals.after_setup_logger.receivers) == before
    finally:
        app.close()
