"""The bad inputs of the catalogue (docs/bad-input.md), named by the ids the tests use."""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from agents_persistence.validation import MAX_THREAD_ID_LENGTH

__all__ = ["BAD_SNAPSHOTS", "BAD_THREAD_IDS", "deep", "deep_list"]


def deep(levels: int) -> dict[str, Any]:
    """A dict nested ``levels`` deep."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        child: dict[str, Any] = {}
        node["a"] = child
        node = child
    return root


def deep_list(levels: int) -> list[Any]:
    """A list nested ``levels`` deep."""
    root: list[Any] = []
    node = root
    for _ in range(levels):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


#: Thread ids no checkpointer accepts (every one raises InvalidThreadId).
BAD_THREAD_IDS: Final[dict[str, object]] = {
    "empty": "",
    "whitespace": " \t\n ",
    "nul": "thread\x00id",
    "newline": "thread\nid",
    "escape": "\x1b[31mred",
    "del": "thread\x7f",
    "c1-control": "thread\x85",
    "line-separator": "thread\u2028id",
    "too-long": "x" * (MAX_THREAD_ID_LENGTH + 1),
    "lone-surrogate": "thread\ud800",
    "int": 42,
    "bytes": b"thread",
    "none": None,
    "list": ["thread"],
}

#: Snapshots (as the mappings an agent may pass) that raise InvalidSnapshot.
BAD_SNAPSHOTS: Final[dict[str, object]] = {
    "todos-not-list": {"todos": "write tests"},
    "todo-no-content": {"todos": [{"status": "pending"}]},
    "unknown-status": {"todos": [{"content": "x", "status": "done"}]},
    "files-not-str": {"files": {"a.txt": 1}},
    "scratchpad-int-key": {"scratchpad": {1: "x"}},
    "unknown-field": {"todos": [], "bogus": 1},
    "unknown-interrupt": {"pending_interrupts": [{"type": "robot", "tool_name": "rm"}]},
    "deep-dict": {"scratchpad": {"d": deep(5000)}},
    "deep-list": {"scratchpad": {"d": deep_list(5000)}},
    "nan": {"scratchpad": {"x": math.nan}},
    "infinity": {"scratchpad": {"x": -math.inf}},
    "set": {"scratchpad": {"x": {1, 2}}},
    "bytes": {"scratchpad": {"x": b"raw"}},
    "datetime": {"scratchpad": {"x": datetime(2026, 1, 1)}},
    "decimal": {"scratchpad": {"x": Decimal("1.5")}},
    "object": {"scratchpad": {"x": object()}},
    "lone-surrogate": {"files": {"a.txt": "\udc80"}},
    "not-a-mapping": ["todos"],
    "none": None,
}
