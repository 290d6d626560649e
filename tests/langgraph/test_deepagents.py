"""deepagents end to end on ``RedisCheckpointSaver``, across two OS processes.

Process A (this test) runs a deep agent with a scripted chat model: it writes todos, writes a
file, then calls a tool ``interrupt_on`` guards, and the run stops on the human-in-the-loop
interrupt. Process B (``python -m tests.langgraph.deepagent_script``) builds the same agent,
loads the thread from Redis, approves the call with ``Command(resume={"decisions": [...]})``;
the tool runs there and the final state holds the todos and the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agents_persistence.langgraph import RedisCheckpointSaver

from tests.langgraph.deepagent_script import (
    FILE_PATH,
    FILE_TEXT,
    GUARDED_TOOL,
    TODOS,
    build_agent,
    process_a_replies,
    scripted,
    thread_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def run_process_b(url: str, namespace: str, thread_id: str) -> dict[str, Any]:
    """Resume the thread in a fresh interpreter; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.langgraph.deepagent_script", url, namespace, thread_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_process_b_resumes_the_interrupted_thread_from_redis(
    real_redis_url: str, namespace: str
) -> None:
    saver = RedisCheckpointSaver.from_url(real_redis_url, namespace=namespace)
    try:
        agent = build_agent(scripted(process_a_replies()), saver)
        result = agent.invoke(
            {"messages": [{"role": "user", "content": "Write and ship the report"}]},
            thread_config("deep-1"),
        )
    finally:
        saver.close()
    # Process A stopped at the guarded call, with its todos and file already checkpointed.
    (interrupt,) = result["__interrupt__"]
    assert [a["name"] for a in interrupt.value["action_requests"]] == [GUARDED_TOOL]
    assert result["todos"] == TODOS
    assert result["files"][FILE_PATH]["content"] == FILE_TEXT

    report = run_process_b(real_redis_url, namespace, "deep-1")
    print(f"process B (pid {report['pid']}) loaded from Redis:")
    for key, value in report["loaded"].items():
        print(f"  {key}: {json.dumps(value)}")

    assert report["pid"] != os.getpid()
    loaded = report["loaded"]
    assert loaded["todos"] == TODOS
    assert loaded["files"] == {FILE_PATH: FILE_TEXT}
    (pending,) = loaded["interrupts"]
    assert pending["action_requests"][0]["args"] == {"path": FILE_PATH}
    assert loaded["next"] == ["HumanInTheLoopMiddleware.after_model"]
    (hitl,) = loaded["snapshot"]["pending_interrupts"]
    assert (hitl["tool_name"], hitl["call_id"]) == (GUARDED_TOOL, "call-ship")

    final = report["final"]
    assert final["interrupts"] == []
    assert final["todos"] == TODOS
    assert final["files"] == {FILE_PATH: FILE_TEXT}
    # The approved tool ran in process B, and the scripted model answered after it.
    assert final["tool_results"][-1] == f"shipped {FILE_PATH} from pid {report['pid']}"
    assert final["last_message"] == "Report shipped."

    # Process A sees what B finished: the thread in Redis is complete.
    reader = RedisCheckpointSaver.from_url(real_redis_url, namespace=namespace)
    try:
        state = build_agent(scripted([]), reader).get_state(thread_config("deep-1"))
    finally:
        reader.close()
    assert state.next == ()
    assert state.values["messages"][-1].content == "Report shipped."
