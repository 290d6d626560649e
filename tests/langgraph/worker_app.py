"""The shipped worker app with the LangGraph write-behind task registered, for tests
(``celery -A tests.langgraph.worker_app:app worker``), until ``handlers.register_tasks``
registers it for every app."""

from __future__ import annotations

from agents_persistence.tasks import create_app
from agents_persistence.tasks.worker.langgraph_tasks import (
    SAVE_CHECKPOINT_TASK,
    register_langgraph_tasks,
)

__all__ = ["app"]

app = create_app()
if SAVE_CHECKPOINT_TASK not in app.tasks:
    register_langgraph_tasks(app)
