"""Hypothesis strategies for valid snapshots (anything the models accept and JSON carries)."""

from __future__ import annotations

from datetime import UTC, datetime

from agents_persistence import AgentStateSnapshot, HitlInterrupt, TodoItem, TodoStatus
from hypothesis import strategies as st
from pydantic import JsonValue

__all__ = ["interrupts", "json_values", "snapshots", "todos"]

_I64 = 2**63 - 1

#: Any JSON value (finite floats, 64-bit ints, any text without lone surrogates).
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-_I64 - 1, max_value=_I64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

todos: st.SearchStrategy[TodoItem] = st.builds(
    TodoItem, content=st.text(max_size=40), status=st.sampled_from(TodoStatus)
)

interrupts: st.SearchStrategy[HitlInterrupt] = st.builds(
    HitlInterrupt,
    tool_name=st.text(max_size=20),
    tool_args=json_values,
    policy_note=st.none() | st.text(max_size=40),
    created_at=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ),
    call_id=st.none() | st.text(max_size=12),
)

snapshots: st.SearchStrategy[AgentStateSnapshot] = st.builds(
    AgentStateSnapshot,
    todos=st.lists(todos, max_size=5),
    files=st.dictionaries(st.text(max_size=16), st.text(max_size=200), max_size=5),
    scratchpad=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    pending_interrupts=st.lists(interrupts, max_size=3),
)
