"""What an agent crash can lose, as the README says: an agent process hands off, then dies.

The agent is a real process (``CeleryCheckpointer.from_settings()`` from its environment) that
prints each hand-off ``save_state`` returned for, then is SIGKILLed or simply exits without
``flush()`` or ``close()``. No worker runs while it does; one starts afterwards, and the test
waits until the broker is drained, then reads every thread back.

- durable: nothing ``save_state`` returned for is lost;
- buffered, normal exit: nothing is lost (the client publishes its buffer at exit);
- buffered, SIGKILL: at most a full buffer plus the batch being published are lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, StackFactory
from tests.support.celery_worker import clean_environ, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.redis]

AGENT = """
import os, signal, sys
from agents_persistence import AgentStateSnapshot
from agents_persistence.tasks import CeleryCheckpointer

count, end = int(sys.argv[1]), sys.argv[2]
client = CeleryCheckpointer.from_settings()
for i in range(count):
    state = AgentStateSnapshot(scratchpad={"i": i}, files={"notes.md": "x" * 200})
    handle = client.save_state(f"agent-{i}", state, version=1)
    print(handle.thread_id, handle.version, flush=True)
if end == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_agent(stack: Stack, tmp_path: Path, count: int, end: str, **fields: Any) -> dict[str, int]:
    """Run the agent; returns the hand-offs it printed (thread id -> version)."""
    proc = subprocess.run(
        [sys.executable, "-c", AGENT, str(count), end],
        env=clean_environ({**stack.env, **settings_env(**fields)}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    expected = -signal.SIGKILL if end == "kill" else 0
    assert proc.returncode == expected, proc.stderr
    handed = dict(line.split() for line in proc.stdout.splitlines())
    return {tid: int(version) for tid, version in handed.items()}


def lost_after_a_worker_drains(stack: Stack, handed: dict[str, int]) -> list[str]:
    """Start a worker, wait until the broker holds nothing, return the threads not stored."""
    stack.worker(concurrency=2)
    stack.wait_idle(timeout=60, settle=0.5)
    stored = stack.store.stored_versions(list(handed))
    return sorted(tid for tid, version in handed.items() if stored.get(tid, 0) < version)


def test_a_durable_hand_off_survives_its_agent_killed(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = stack_factory()
    handed = run_agent(stack, tmp_path, 50, "kill", handoff_mode="durable")
    assert len(handed) == 50
    assert lost_after_a_worker_drains(stack, handed) == []


def test_a_buffered_agent_that_exits_without_flush_loses_nothing(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = stack_factory()
    handed = run_agent(stack, tmp_path, 300, "exit", handoff_mode="buffered")
    assert len(handed) == 300
    assert lost_after_a_worker_drains(stack, handed) == []


def test_a_killed_buffered_agent_loses_at_most_its_buffer_and_one_batch(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    capacity = 5
    stack = stack_factory()
    handed = run_agent(
        stack, tmp_path, 300, "kill", handoff_mode="buffered", buffer_max_snapshots=capacity
    )
    assert len(handed) == 300
    lost = lost_after_a_worker_drains(stack, handed)
    assert len(lost) <= 2 * capacity, lost
