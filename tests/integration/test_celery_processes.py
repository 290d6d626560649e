"""The process helpers the integration and fault tests rely on (tests.support.celery_worker)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import WorkerFactory
from tests.support import RedisServer
from tests.support.celery_worker import (
    CeleryProcessError,
    CeleryWorker,
    pid_alive,
    settings_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.fixture
def env(redis_server: RedisServer) -> dict[str, str]:
    return settings_env(redis_url=redis_server.url, namespace="t-procs", queue="q-procs")


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_children_pause_kill_child_and_terminate(
    env: dict[str, str], celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(env, concurrency=2)
    children = worker.child_pids()
    assert len(children) == 2
    assert worker.group_pids() == sorted([worker.pid, *children])

    # A signal is delivered asynchronously: wait for the states, never read them at once.
    worker.pause()
    _wait_for(lambda: {_state(pid) for pid in worker.group_pids()} == {"T"}, "all stopped")
    worker.resume()
    _wait_for(lambda: "T" not in {_state(pid) for pid in worker.group_pids()}, "none stopped")

    killed = worker.kill_child()
    deadline = time.monotonic() + 10
    while killed in worker.child_pids() or len(worker.child_pids()) < 2:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.05)
    assert worker.running  # the pool replaced its child

    worker.terminate()
    assert worker.wait(timeout=20) == 0
    assert worker.group_pids() == []
    assert not worker.running
    assert worker.stop() == 0  # idempotent


@pytest.mark.timeout(60)
def test_kill_group_and_stop_of_a_paused_worker(
    env: dict[str, str], celery_worker_factory: WorkerFactory
) -> None:
    first = celery_worker_factory(env, concurrency=2)
    members = first.group_pids()
    assert first.kill_group() == -signal.SIGKILL
    assert not any(pid_alive(pid) for pid in members)

    second = celery_worker_factory(env, concurrency=1)
    second.pause()
    assert second.stop(timeout=20) == 0  # SIGCONT lets the warm shutdown run
    assert second.group_pids() == []


@pytest.mark.timeout(60)
def test_a_worker_that_cannot_start_fails_with_its_log_and_leaves_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = {**env, "AGENTS_PERSISTENCE_NAMESPACE": "no:colons"}
    worker = CeleryWorker(bad, directory=tmp_path, startup_timeout=20)

    with pytest.raises(CeleryProcessError, match="namespace") as failed:
        worker.start()

    assert "exited while waiting" in str(failed.value)
    assert worker.group_pids() == []
