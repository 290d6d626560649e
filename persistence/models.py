"""The agent-state data model, the same JSON shape as the Rust ``agents_core`` serde output.

::

    {"todos": [{"content": "Write tests", "status": "in_progress"}],
     "files": {"a.txt": "hi"},
     "scratchpad": {"k": {"n": 1}},
     "pending_interrupts": [{"type": "human_in_loop", "tool_name": "rm", ...}]}

``pending_interrupts`` is left out of the JSON when it is empty, as serde's
``skip_serializing_if = "Vec::is_empty"`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

__all__ = [
    "AgentInterrupt",
    "AgentStateSnapshot",
    "HitlInterrupt",
    "TodoItem",
    "TodoStatus",
]

# ser_json_inf_nan="constants": a NaN slipped in after validation is written as the
# (invalid) JSON constant, which the codec detects and refuses, instead of a silent null.
_MODEL_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, ser_json_inf_nan="constants")


class TodoStatus(StrEnum):
    """Where a todo item stands (serialised in snake case, as serde does)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class TodoItem(BaseModel):
    """One entry of the agent's todo list."""

    model_config = _MODEL_CONFIG

    content: str
    status: TodoStatus = TodoStatus.PENDING

    @classmethod
    def pending(cls, content: str) -> TodoItem:
        """A new todo in the ``pending`` state (the seed's ``TodoItem::pending``)."""
        return cls(content=content, status=TodoStatus.PENDING)


class HitlInterrupt(BaseModel):
    """A tool call held for a human's decision (``"type": "human_in_loop"``)."""

    model_config = _MODEL_CONFIG

    type: Literal["human_in_loop"] = "human_in_loop"
    tool_name: str
    tool_args: JsonValue = Field(default_factory=dict)
    policy_note: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    call_id: str | None = None


#: Every interrupt kind, tagged by ``type``; only human-in-the-loop exists so far.
AgentInterrupt = Annotated[HitlInterrupt, Field(discriminator="type")]


class AgentStateSnapshot(BaseModel):
    """Everything an agent needs to resume a thread."""

    model_config = _MODEL_CONFIG

    todos: list[TodoItem] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    scratchpad: dict[str, JsonValue] = Field(default_factory=dict)
    pending_interrupts: list[AgentInterrupt] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_empty_interrupts(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.pending_interrupts:
            data.pop("pending_interrupts", None)
        return data

    @classmethod
    def from_deepagents(cls, state: Any) -> AgentStateSnapshot:
        """The seed's shape of a LangChain ``deepagents`` agent's state.

        ``state`` is what the agent returns or holds: the dict of ``agent.invoke(...)`` (its
        ``__interrupt__`` entry read too), the state a middleware hook receives, or the
        ``StateSnapshot`` of ``agent.get_state(config)`` (its ``values`` and ``interrupts``).
        ``todos`` keep content and status; each file becomes its text (a ``FileData``'s
        ``content``, lines joined for older deepagents; base64 content stays encoded;
        timestamps dropped); each action of a pending human-in-the-loop request becomes a
        ``HitlInterrupt`` (its description as ``policy_note``, the tool call's id as
        ``call_id`` when the state's last assistant message holds it). Interrupts that are
        not deepagents' review requests have no place in the seed's shape and are left out.
        """
        values: Mapping[str, Any]
        if isinstance(state, Mapping):
            values = state
            interrupts = list(state.get("__interrupt__") or ())
        else:  # langgraph's StateSnapshot
            values = state.values
            interrupts = list(state.interrupts)
        return cls(
            todos=[
                TodoItem(content=t["content"], status=t.get("status", TodoStatus.PENDING))
                for t in values.get("todos") or ()
            ],
            files={path: _file_text(data) for path, data in (values.get("files") or {}).items()},
            pending_interrupts=[
                hitl
                for interrupt in interrupts
                for hitl in _hitl_requests(
                    getattr(interrupt, "value", interrupt), values.get("messages") or ()
                )
            ],
        )

    def merge(self, newer: AgentStateSnapshot) -> AgentStateSnapshot:
        """The seed's reducer: combine this state with a ``newer`` one.

        ``files`` and ``scratchpad`` merge key by key, the newer side winning; ``todos`` and
        ``pending_interrupts`` are replaced only when the newer list is non-empty.
        """
        return AgentStateSnapshot.model_construct(
            todos=list(newer.todos) if newer.todos else list(self.todos),
            files={**self.files, **newer.files},
            scratchpad={**self.scratchpad, **newer.scratchpad},
            pending_interrupts=(
                list(newer.pending_interrupts)
                if newer.pending_interrupts
                else list(self.pending_interrupts)
            ),
        )


def _file_text(data: Any) -> str:
    """A deepagents file's text: ``FileData["content"]`` (a string, or lines before 0.5)."""
    if isinstance(data, str):
        return data
    content = data["content"]
    return content if isinstance(content, str) else "\n".join(content)


def _hitl_requests(value: Any, messages: Iterable[Any]) -> list[HitlInterrupt]:
    """The actions of one ``HITLRequest`` (``{"action_requests": [...], ...}``)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("action_requests"), list):
        return []
    calls = next(
        (list(m.tool_calls) for m in reversed(list(messages)) if getattr(m, "tool_calls", None)),
        [],
    )
    found: list[HitlInterrupt] = []
    for action in value["action_requests"]:
        call = next(
            (c for c in calls if c["name"] == action["name"] and c["args"] == action["args"]),
            None,
        )
        if call is not None:
            calls.remove(call)
        found.append(
            HitlInterrupt(
                tool_name=action["name"],
                tool_args=action.get("args", {}),
                policy_note=action.get("description"),
                call_id=None if call is None else call.get("id"),
            )
        )
    return found
