"""LangGraph checkpoints on plain Redis: ``RedisCheckpointSaver`` (extra ``[langgraph]``).

Install with ``pip install 'agents-persistence[langgraph]'``; importing this package needs
``langgraph-checkpoint`` 4.x.
"""

from __future__ import annotations

from agents_persistence.langgraph.keys import SaverKeys
from agents_persistence.langgraph.saver import RedisCheckpointSaver

__all__ = ["RedisCheckpointSaver", "SaverKeys"]
