"""A deepagents agent on ``RedisCheckpointSaver`` with a scripted chat model (no network).

Imported by ``test_deepagents.py`` (process A) and run as a script by it (process B)::

    python -m tests.langgraph.deepagent_script <redis-url> <namespace> <thread-id>

Process B builds the same agent, loads the thread from Redis, prints what it loaded, resumes
the pending interrupt with an approval and prints the final state: one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from agents_persistence import AgentStateSnapshot
from agents_persistence.langgraph import RedisCheckpointSaver
from langchain.agents.middleware import AgentMiddleware, TodoListMiddleware
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.base import BaseCheckpointSaver

#: The tool ``interrupt_on`` guards.
GUARDED_TOOL = "ship_report"
TODOS = [
    {"content": "Draft the report", "status": "completed"},
    {"content": "Ship the report", "status": "in_progress"},
]
FILE_PATH = "/report.md"
FILE_TEXT = "# Report\n\nAll green.\n"


class ScriptedChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that accepts ``bind_tools`` (the agent binds its tools; the
    script already says which to call)."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model, unchanged: its replies are scripted."""
        return self


def scripted(replies: list[AIMessage]) -> ScriptedChatModel:
    """A fake model answering each call with the next of ``replies``."""
    messages: Iterator[AIMessage] = iter(replies)
    return ScriptedChatModel(messages=messages)


def call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    """An assistant turn that calls one tool."""
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])


def process_a_replies() -> list[AIMessage]:
    """Todos, a file, then the guarded tool (where the run stops)."""
    return [
        call("write_todos", {"todos": TODOS}, "call-todos"),
        call("write_file", {"file_path": FILE_PATH, "content": FILE_TEXT}, "call-file"),
        call(GUARDED_TOOL, {"path": FILE_PATH}, "call-ship"),
    ]


def process_b_replies() -> list[AIMessage]:
    """After the approved tool has run: the final answer."""
    return [AIMessage(content="Report shipped.")]


@tool(GUARDED_TOOL)
def ship_report(path: str) -> str:
    """Ship the report at ``path`` (needs a human's approval)."""
    return f"shipped {path} from pid {os.getpid()}"


def build_agent(
    model: ScriptedChatModel,
    saver: BaseCheckpointSaver[Any] | None,
    middleware: Sequence[AgentMiddleware[Any, Any]] = (),
) -> Any:
    """The deep agent, guarded tool and all, checkpointing to ``saver``."""
    from deepagents import create_deep_agent

    return create_deep_agent(
        model=model,
        tools=[ship_report],
        interrupt_on={GUARDED_TOOL: True},
        checkpointer=saver,
        # deepagents 0.7 no longer adds the todo list by default (some harness profiles do).
        middleware=[TodoListMiddleware(), *middleware],
    )


def thread_config(thread_id: str) -> dict[str, Any]:
    """The run config of one thread."""
    return {"configurable": {"thread_id": thread_id}}


def resume(url: str, namespace: str, thread_id: str) -> dict[str, Any]:
    """Process B: load the thread, report it, approve the pending call, report the end."""
    from langgraph.types import Command

    saver = RedisCheckpointSaver.from_url(url, namespace=namespace)
    try:
        agent = build_agent(scripted(process_b_replies()), saver)
        config = thread_config(thread_id)
        loaded = agent.get_state(config)
        report: dict[str, Any] = {
            "pid": os.getpid(),
            "loaded": {
                "todos": loaded.values.get("todos"),
                "files": {p: d["content"] for p, d in loaded.values.get("files", {}).items()},
                "interrupts": [i.value for i in loaded.interrupts],
                "next": list(loaded.next),
                "snapshot": AgentStateSnapshot.from_deepagents(loaded).model_dump(mode="json"),
            },
        }
        agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
        final = agent.get_state(config)
        tool_results = [m.content for m in final.values["messages"] if isinstance(m, ToolMessage)]
        report["final"] = {
            "todos": final.values.get("todos"),
            "files": {p: d["content"] for p, d in final.values.get("files", {}).items()},
            "interrupts": [i.value for i in final.interrupts],
            "tool_results": tool_results,
            "last_message": final.values["messages"][-1].content,
        }
        return report
    finally:
        saver.close()


if __name__ == "__main__":
    url_arg, namespace_arg, thread_arg = sys.argv[1:4]
    print(json.dumps(resume(url_arg, namespace_arg, thread_arg), default=str))
