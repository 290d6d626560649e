"""Stable task names: producers and workers of different versions agree on these."""

from typing import Final

__all__ = [
    "CLEANUP_TASK",
    "DELETE_TASK",
    "SAVE_BATCH_TASK",
    "SAVE_CHECKPOINT_TASK",
    "SAVE_TASK",
    "TASK_NAMES",
]

SAVE_TASK: Final = "agents_persistence.save_state"
SAVE_BATCH_TASK: Final = "agents_persistence.save_states"
DELETE_TASK: Final = "agents_persistence.delete_thread"
CLEANUP_TASK: Final = "agents_persistence.cleanup_expired"
#: The LangGraph saver's write-behind (agents_persistence.langgraph, handoff=...).
SAVE_CHECKPOINT_TASK: Final = "agents_persistence.save_checkpoint"
#: Every task the workers serve; nothing else is run or replayed.
TASK_NAMES: Final = frozenset(
    {SAVE_TASK, SAVE_BATCH_TASK, DELETE_TASK, CLEANUP_TASK, SAVE_CHECKPOINT_TASK}
)
