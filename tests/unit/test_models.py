"""The snapshot models: the Rust crate's JSON shape, TodoItem.pending, and merge."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from agents_persistence import AgentStateSnapshot, HitlInterrupt, TodoItem, TodoStatus
from pydantic import ValidationError

from tests.support import SEED_JSON

pytestmark = pytest.mark.unit


def test_seed_json_round_trips_key_for_key() -> None:
    state = AgentStateSnapshot.model_validate_json(SEED_JSON)
    assert json.loads(state.model_dump_json()) == json.loads(SEED_JSON)
    assert state.model_dump(mode="json") == json.loads(SEED_JSON)


def test_seed_json_fields() -> None:
    state = AgentStateSnapshot.model_validate_json(SEED_JSON)
    assert state.todos == [TodoItem(content="Write tests", status=TodoStatus.IN_PROGRESS)]
    assert state.files == {"a.txt": "hi"}
    assert state.scratchpad == {"k": {"n": 1}}
    (interrupt,) = state.pending_interrupts
    assert isinstance(interrupt, HitlInterrupt)
    assert interrupt.type == "human_in_loop"
    assert interrupt.tool_name == "rm"
    assert interrupt.tool_args == {"path": "/tmp/x"}
    assert interrupt.policy_note == "why"
    assert interrupt.created_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert interrupt.call_id == "c1"


def test_no_interrupts_means_no_pending_interrupts_key() -> None:
    state = AgentStateSnapshot(todos=[TodoItem.pending("x")], files={"f": "y"})
    assert "pending_interrupts" not in json.loads(state.model_dump_json())
    assert "pending_interrupts" not in state.model_dump()
    assert json.loads(AgentStateSnapshot().model_dump_json()) == {
        "todos": [],
        "files": {},
        "scratchpad": {},
    }


def test_missing_fields_default_to_empty() -> None:
    assert AgentStateSnapshot.model_validate_json("{}") == AgentStateSnapshot()


def test_todo_item_pending() -> None:
    item = TodoItem.pending("Write tests")
    assert (item.content, item.status) == ("Write tests", TodoStatus.PENDING)
    assert json.loads(item.model_dump_json()) == {"content": "Write tests", "status": "pending"}


def test_todo_status_is_snake_case() -> None:
    assert [s.value for s in TodoStatus] == ["pending", "in_progress", "completed"]


@pytest.mark.parametrize(
    "data",
    [
        {"todos": [{"content": "x", "status": "done"}]},
        {"todos": [{"status": "pending"}]},
        {"files": {"a": None}},
        {"extra": 1},
        {"pending_interrupts": [{"type": "something_else", "tool_name": "rm"}]},
        {"pending_interrupts": [{"tool_name": "rm", "type": "human_in_loop", "bogus": 1}]},
    ],
)
def test_invalid_shapes_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AgentStateSnapshot.model_validate(data)


def test_nan_is_refused() -> None:
    with pytest.raises(ValidationError):
        AgentStateSnapshot(scratchpad={"x": float("nan")})


# -- merge ----------------------------------------------------------------------------------------
def _interrupt(name: str) -> HitlInterrupt:
    return HitlInterrupt(tool_name=name, created_at=datetime(2026, 1, 1, tzinfo=UTC))


OLD = AgentStateSnapshot(
    todos=[TodoItem.pending("old")],
    files={"a": "old a", "b": "old b"},
    scratchpad={"x": 1, "y": {"deep": "old"}},
    pending_interrupts=[_interrupt("old")],
)


def test_merge_files_and_scratchpad_by_key_newer_wins() -> None:
    newer = AgentStateSnapshot(files={"b": "new b", "c": "new c"}, scratchpad={"y": 2, "z": 3})
    merged = OLD.merge(newer)
    assert merged.files == {"a": "old a", "b": "new b", "c": "new c"}
    assert merged.scratchpad == {"x": 1, "y": 2, "z": 3}


def test_merge_keeps_lists_when_the_newer_ones_are_empty() -> None:
    merged = OLD.merge(AgentStateSnapshot())
    assert merged.todos == OLD.todos
    assert merged.pending_interrupts == OLD.pending_interrupts
    assert merged == OLD


def test_merge_replaces_non_empty_lists() -> None:
    newer = AgentStateSnapshot(
        todos=[TodoItem(content="new", status=TodoStatus.COMPLETED)],
        pending_interrupts=[_interrupt("new")],
    )
    merged = OLD.merge(newer)
    assert merged.todos == newer.todos
    assert merged.pending_interrupts == newer.pending_interrupts


def test_merge_changes_neither_side() -> None:
    before_old, newer = OLD.model_copy(deep=True), AgentStateSnapshot(files={"a": "x"})
    merged = OLD.merge(newer)
    merged.files["later"] = "y"
    merged.todos.append(TodoItem.pending("later"))
    assert before_old == OLD
    assert newer == AgentStateSnapshot(files={"a": "x"})


def test_merge_result_serialises_like_any_snapshot() -> None:
    merged = OLD.merge(AgentStateSnapshot(files={"n": "v"}))
    again = AgentStateSnapshot.model_validate_json(merged.model_dump_json())
    assert again == merged
