"""``PersistenceMiddleware``: a deep agent's todos and files reach Redis through a real
Celery worker, one hand-off after each model step."""

from __future__ import annotations

import pytest
from agents_persistence import TodoItem
from agents_persistence.tasks.client.deepagents import PersistenceMiddleware, thread_id_of
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from tests.integration.conftest import Stack
from tests.langgraph.deepagent_script import (
    FILE_PATH,
    FILE_TEXT,
    TODOS,
    build_agent,
    process_a_replies,
    process_b_replies,
    scripted,
    thread_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_each_model_step_hands_the_snapshot_to_the_worker(stack: Stack) -> None:
    stack.worker()
    client = stack.client(mode="durable")
    persistence = PersistenceMiddleware(client)
    model = scripted(process_a_replies() + process_b_replies())
    agent = build_agent(model, InMemorySaver(), middleware=[persistence])
    config = thread_config("deep-mw")

    agent.invoke({"messages": [{"role": "user", "content": "Write and ship the report"}]}, config)
    # Stopped at the review of the guarded call: the last hand-off followed the model step
    # that wrote the file, so it holds the todos but not yet the file.
    assert persistence.handed_off is not None
    persistence.handed_off.wait(60)
    at_review = stack.store.load_state("deep-mw")
    assert at_review is not None
    assert at_review.todos == [TodoItem.model_validate(t) for t in TODOS]
    assert at_review.files == {}

    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    persistence.handed_off.wait(60)
    final = stack.store.load_state("deep-mw")
    assert final is not None
    assert final.todos == [TodoItem.model_validate(t) for t in TODOS]
    assert final.files == {FILE_PATH: FILE_TEXT}
    assert final.pending_interrupts == []
    # One snapshot per model step: write_todos, write_file, the guarded call, the answer.
    assert client.handed_off == 4


def test_the_thread_id_comes_from_the_run_config() -> None:
    assert thread_id_of({"configurable": {"thread_id": 7}}) == "7"
    with pytest.raises(ValueError, match="thread_id"):
        thread_id_of({"configurable": {}})
