"""Snapshots and raw bytes that several test modules share."""

from __future__ import annotations

from typing import Final

from agents_persistence import AgentStateSnapshot, TodoItem, TodoStatus

__all__ = ["SEED_JSON", "odd_thread_ids", "sample_state"]

#: A snapshot as the Rust crate's serde writes it, every field present.
SEED_JSON: Final = (
    '{"todos":[{"content":"Write tests","status":"in_progress"}],"files":{"a.txt":"hi"},'
    '"scratchpad":{"k":{"n":1}},"pending_interrupts":[{"type":"human_in_loop","tool_name":"rm",'
    '"tool_args":{"path":"/tmp/x"},"policy_note":"why","created_at":"2026-01-02T03:04:05.123456Z",'
    '"call_id":"c1"}]}'
)


def sample_state(tag: str = "x", *, size: int = 0) -> AgentStateSnapshot:
    """A small snapshot whose content names ``tag`` (plus ``size`` bytes of file text)."""
    return AgentStateSnapshot(
        todos=[TodoItem(content=f"todo {tag}", status=TodoStatus.IN_PROGRESS)],
        files={f"{tag}.txt": f"file {tag}" + "x" * size},
        scratchpad={"tag": tag, "n": [1, 2.5, None, True, {"deep": tag}]},
    )


def odd_thread_ids() -> list[str]:
    """Valid thread ids that a naive key scheme or encoding would get wrong."""
    return [
        "a:b:c",
        ":leading",
        "trailing:",
        "thread:x",
        "with space",
        "  padded  ",
        "ünïcödé-线程-🧵",
        "*?[glob]",
        "{hashtag}",
        "x" * 200,
        "é" * 512,
    ]
