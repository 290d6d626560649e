"""A deepagents / LangChain agent middleware that hands each model step's state to Celery.

::

    from agents_persistence.tasks.client.deepagents import PersistenceMiddleware

    agent = create_deep_agent(..., middleware=[PersistenceMiddleware(celery_checkpointer)])

After every model call, :meth:`PersistenceMiddleware.after_model` builds the seed's snapshot
(:meth:`AgentStateSnapshot.from_deepagents`: todos and file texts) and hands it to the
:class:`CeleryCheckpointer` under the run's ``thread_id``; the workers write it to Redis.

A pending human-in-the-loop review is not part of what this hook sees: deepagents runs the
review middleware's ``after_model`` before the user's, and its interrupt stops the step
before this hook. Read a thread's pending reviews from the graph's own checkpointer
(``AgentStateSnapshot.from_deepagents(agent.get_state(config))``).

Needs the ``[deepagents]`` extra (``langchain``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from agents_persistence.models import AgentStateSnapshot
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer, HandOff
from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.runtime import Runtime

__all__ = ["PersistenceMiddleware", "thread_id_of"]


def thread_id_of(config: RunnableConfig) -> str:
    """The run's ``configurable["thread_id"]`` (what LangGraph checkpointers key on)."""
    configurable: Mapping[str, Any] = config.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None:
        msg = "PersistenceMiddleware needs config['configurable']['thread_id'] on the run"
        raise ValueError(msg)
    return str(thread_id)


class PersistenceMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Hands the agent's todos and files to a :class:`CeleryCheckpointer` after each model
    step.

    Args:
        checkpointer: the hand-off client (its namespace is where the snapshots land).
        thread_id_from: maps the run's config to the thread id; default
            :func:`thread_id_of` (``configurable["thread_id"]``).

    ``handed_off`` holds the last hand-off's handle (``handle.wait(timeout)`` gives
    read-your-writes), ``None`` before the first step.
    """

    def __init__(
        self,
        checkpointer: CeleryCheckpointer,
        *,
        thread_id_from: Callable[[RunnableConfig], str] = thread_id_of,
    ) -> None:
        super().__init__()
        self.checkpointer = checkpointer
        self.thread_id_from = thread_id_from
        self.handed_off: HandOff | None = None

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Hand off the snapshot of ``state``; the agent's state is left unchanged."""
        thread_id = self.thread_id_from(get_config())
        snapshot = AgentStateSnapshot.from_deepagents(state)
        self.handed_off = self.checkpointer.save_state(thread_id, snapshot)
        return None

    async def aafter_model(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """:meth:`after_model` off the event loop (a durable hand-off waits on the broker)."""
        thread_id = self.thread_id_from(get_config())
        snapshot = AgentStateSnapshot.from_deepagents(state)
        self.handed_off = await asyncio.to_thread(
            self.checkpointer.save_state, thread_id, snapshot
        )
        return None
