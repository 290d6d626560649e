"""``AgentStateSnapshot.from_deepagents``: a deepagents state in the seed's shape."""

from __future__ import annotations

from typing import Any

import pytest
from agents_persistence import AgentStateSnapshot, HitlInterrupt, TodoItem, TodoStatus
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.types import Interrupt, StateSnapshot
from pydantic import ValidationError

pytestmark = pytest.mark.unit

STAMP = "2026-01-02T03:04:05+00:00"
REVIEW = {
    "action_requests": [
        {"name": "rm", "args": {"path": "/a"}, "description": "Tool execution requires approval"},
        {"name": "rm", "args": {"path": "/b"}},
    ],
    "review_configs": [{"action_name": "rm", "allowed_decisions": ["approve", "reject"]}],
}


def agent_values(**extra: Any) -> dict[str, Any]:
    """State values as deepagents 0.7 holds them."""
    return {
        "messages": [
            HumanMessage("clean up"),
            AIMessage(
                content="",
                tool_calls=[
                    {"name": "ls", "args": {}, "id": "c0"},
                    {"name": "rm", "args": {"path": "/b"}, "id": "c2"},
                    {"name": "rm", "args": {"path": "/a"}, "id": "c1"},
                ],
            ),
        ],
        "todos": [
            {"content": "List files", "status": "completed"},
            {"content": "Remove junk", "status": "in_progress"},
        ],
        "files": {
            "/notes.md": {
                "content": "line 1\nline 2",
                "encoding": "utf-8",
                "created_at": STAMP,
                "modified_at": STAMP,
            },
            "/old.txt": {"content": ["a", "b"], "created_at": STAMP, "modified_at": STAMP},
            "/logo.png": {"content": "iVBORw0KGgo=", "encoding": "base64"},
        },
        **extra,
    }


def test_todos_files_and_interrupts_from_an_invoke_result() -> None:
    state = agent_values(__interrupt__=[Interrupt(value=REVIEW, id="i-1")])
    snap = AgentStateSnapshot.from_deepagents(state)
    assert snap.todos == [
        TodoItem(content="List files", status=TodoStatus.COMPLETED),
        TodoItem(content="Remove junk", status=TodoStatus.IN_PROGRESS),
    ]
    assert snap.files == {
        "/notes.md": "line 1\nline 2",
        "/old.txt": "a\nb",  # deepagents before 0.5 kept a file as its lines
        "/logo.png": "iVBORw0KGgo=",  # binary stays base64
    }
    first, second = snap.pending_interrupts
    assert isinstance(first, HitlInterrupt)
    assert (first.tool_name, first.tool_args, first.call_id) == ("rm", {"path": "/a"}, "c1")
    assert first.policy_note == "Tool execution requires approval"
    assert (second.tool_args, second.call_id, second.policy_note) == ({"path": "/b"}, "c2", None)
    assert snap.scratchpad == {}
    # The seed's JSON: it loads back equal.
    assert AgentStateSnapshot.model_validate_json(snap.model_dump_json()) == snap


def test_from_a_state_snapshot() -> None:
    snapshot = StateSnapshot(
        values=agent_values(),
        next=("HumanInTheLoopMiddleware.after_model",),
        config={"configurable": {"thread_id": "t"}},
        metadata=None,
        created_at=None,
        parent_config=None,
        tasks=(),
        interrupts=(Interrupt(value=REVIEW, id="i-1"),),
    )
    snap = AgentStateSnapshot.from_deepagents(snapshot)
    assert [i.call_id for i in snap.pending_interrupts] == ["c1", "c2"]
    assert snap.files["/notes.md"] == "line 1\nline 2"


def test_middleware_state_without_interrupts_or_optional_keys() -> None:
    assert AgentStateSnapshot.from_deepagents({"messages": []}) == AgentStateSnapshot()
    snap = AgentStateSnapshot.from_deepagents({"todos": [{"content": "x"}], "files": {}})
    assert snap.todos == [TodoItem.pending("x")]
    assert "pending_interrupts" not in snap.model_dump()


def test_other_interrupts_are_left_out_and_unmatched_calls_have_no_id() -> None:
    review = {"action_requests": [{"name": "deploy", "args": {"env": "prod"}}]}
    state = {"__interrupt__": [Interrupt(value="What next?", id="q"), Interrupt(value=review)]}
    (only,) = AgentStateSnapshot.from_deepagents(state).pending_interrupts
    assert (only.tool_name, only.tool_args, only.call_id) == ("deploy", {"env": "prod"}, None)


def test_a_todo_status_outside_the_seed_is_refused() -> None:
    with pytest.raises(ValidationError):
        AgentStateSnapshot.from_deepagents({"todos": [{"content": "x", "status": "blocked"}]})
