"""Stable task names: producers and workers of different versions agree on these."""

from typing import Final

__all__ = ["CLEANUP_TASK", "DELETE_TASK", "SAVE_BATCH_TASK", "SAVE_TASK"]

SAVE_TASK: Final = "agents_persistence.save_state"
SAVE_BATCH_TASK: Final = "agents_persistence.save_states"
DELETE_TASK: Final = "agents_persistence.delete_thread"
CLEANUP_TASK: Final = "agents_persistence.cleanup_expired"
