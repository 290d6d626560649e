"""JSON log lines for workers: ``AGENTS_PERSISTENCE_LOG_FORMAT=json``.

One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``process``, and where
known ``task``, ``task_id``, ``thread_id``, ``version``, ``outcome`` and ``runtime``. Celery's
own line for each finished task carries what the task returned (outcome, version) and the
message's argument summary (thread id, version: the hand-off's ``kwargsrepr``, which never
holds the snapshot); those become fields. Anything a log call passes in ``extra`` under
those names too. Message texts are what the text format prints (they never hold passwords:
``tests/security/test_secrets.py`` runs a worker in this format).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from celery import signals

if TYPE_CHECKING:
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["FIELDS", "JsonFormatter", "install"]

#: Record attributes copied into the object when a log call sets them (``extra=``).
FIELDS = ("thread_id", "version", "outcome", "namespace", "task", "task_id")

_OUTCOME = re.compile(r"'outcome': '(\w+)'")
_VERSION = re.compile(r"'version': (\d+)")
_THREAD = re.compile(r"'thread_id': '((?:[^'\\]|\\.)*)'")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        data = getattr(record, "data", None)
        if isinstance(data, dict):  # Celery's task lines (celery.app.trace)
            _task_fields(out, data)
        task = _current_task()
        if task is not None:
            out.setdefault("task", task[0])
            out.setdefault("task_id", task[1])
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _task_fields(out: dict[str, Any], data: dict[str, Any]) -> None:
    out["task"] = data.get("name")
    out["task_id"] = data.get("id")
    if isinstance(data.get("runtime"), float):
        out["runtime"] = data["runtime"]
    returned = str(data.get("return_value", ""))
    kwargs = str(data.get("kwargs", ""))
    if found := _OUTCOME.search(returned):
        out["outcome"] = found[1]
    if found := _VERSION.search(returned) or _VERSION.search(kwargs):
        out["version"] = int(found[1])
    if found := _THREAD.search(kwargs):
        out["thread_id"] = found[1]


def _current_task() -> tuple[str, str] | None:
    from celery._state import get_current_task

    task = get_current_task()
    if task is None or task.request is None or task.request.id is None:
        return None
    return task.name, task.request.id


def use_json(logger: logging.Logger) -> None:
    """Every handler of ``logger`` writes JSON lines."""
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


def install(app: PersistenceApp) -> None:
    """Format a worker's logs as JSON once Celery has set its handlers up."""
    if app.settings.log_format != "json":
        return

    def on_setup(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            use_json(logger)

    uid = f"agents_persistence.logs:{id(app)}"
    signals.after_setup_logger.connect(on_setup, weak=False, dispatch_uid=uid)
    signals.after_setup_task_logger.connect(on_setup, weak=False, dispatch_uid=uid + ":task")
