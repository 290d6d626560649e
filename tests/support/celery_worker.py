"""Real ``celery -A agents_persistence.tasks worker`` and ``celery -A agents_persistence.tasks
beat`` subprocesses for tests.

The implementation is the project's one harness,
:mod:`agents_persistence.tasks.devtools.celery_process` (shared with the demo and bench/):
process groups, readiness by log line, signals by PID, an ``atexit`` safety net. Here the
processes run from the repository root (so ``-A`` can also name a module of the checkout,
e.g. ``bench.noop_app``), and this module keeps the names tests import.

::

    env = settings_env(redis_url=server.url, namespace="t-1", queue="q-1")
    worker = CeleryWorker(env, directory=tmp_path, concurrency=2).start()  # waits for "ready."
    worker.kill_child()        # SIGKILL one pool child (the main process notices)
    worker.pause()             # SIGSTOP the group (freeze); worker.resume() sends SIGCONT
    worker.kill_group()        # SIGKILL everything: the main process and its pool (a crash)
    worker.stop()              # always safe: SIGTERM, then SIGKILL of the group; idempotent

    beat = CeleryBeat(env, directory=tmp_path).start()  # its own temp ``--schedule`` file

Processes get SIGKILL when the thread that started them ends (``PR_SET_PDEATHSIG``): start
them from the test's own thread.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import redis
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from agents_persistence.tasks.devtools import celery_process
from agents_persistence.tasks.devtools.celery_process import CeleryProcess, CeleryProcessError
from agents_persistence.tasks.devtools.processes import (
    clean_environ,
    group_pids,
    pid_alive,
    settings_env,
)

__all__ = [
    "REPO_ROOT",
    "CeleryBeat",
    "CeleryProcess",
    "CeleryProcessError",
    "CeleryWorker",
    "clean_environ",
    "group_pids",
    "kill_outside_pop_window",
    "pid_alive",
    "settings_env",
]

#: The checkout's root: the working directory of every process.
REPO_ROOT = Path(__file__).resolve().parents[2]


class CeleryWorker(celery_process.CeleryWorker):
    """:class:`agents_persistence.tasks.devtools.celery_process.CeleryWorker`, run from the
    repository root unless ``cwd`` says otherwise."""

    default_cwd = REPO_ROOT


class CeleryBeat(celery_process.CeleryBeat):
    """:class:`agents_persistence.tasks.devtools.celery_process.CeleryBeat`, run from the
    repository root unless ``cwd`` says otherwise."""

    default_cwd = REPO_ROOT


def kill_outside_pop_window(
    worker: CeleryWorker, broker: redis.Redis, queue: str, *, timeout: float = 30.0
) -> int:
    """SIGKILL ``worker``'s group (Redis broker) at a moment when every message it has
    taken off ``queue`` is registered as unacknowledged, and at least one is; returns how
    many tries found a message in between.

    kombu's own Redis transport loses a message taken off the queue and not yet recorded in
    the ``unacked`` hash (celery/kombu#305); ours
    (:mod:`agents_persistence.tasks.broker.redis_transport`) moves it to an in-flight list
    instead, which a separate test kills into. A test of what the ``unacked`` hash promises
    (unacknowledged messages come back after the visibility timeout) kills the worker only
    when no message is in flight: it freezes the group (SIGSTOP), so nothing the worker
    does moves between the reads, checks that every in-flight list is empty and ``unacked``
    is not, and kills; otherwise it lets the worker run a moment and tries again.

    Needs a private broker server (``queue`` is not read: producers may keep pushing).

    Raises:
        CeleryProcessError: no such moment within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    in_window = 0
    while True:
        worker.pause()
        inflight = broker.hkeys(INFLIGHT_REGISTRY)
        taken = sum(int(broker.llen(key)) for key in inflight)
        if taken == 0 and int(broker.hlen("unacked")) > 0:
            worker.kill_group()
            return in_window
        in_window += taken > 0
        worker.resume()
        if time.monotonic() > deadline:
            raise CeleryProcessError(
                f"{worker.name}: no moment outside the pop window within {timeout}s "
                f"({in_window} tries inside it)"
            )
        time.sleep(random.uniform(0.001, 0.01))
