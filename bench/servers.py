"""Processes the benchmarks start, through the project's one harness
(:mod:`agents_persistence.tasks.devtools`): a private ``redis-server`` and ``celery worker``
pools, ended by PID (a worker by its process group, so the pool children go too).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agents_persistence.tasks.devtools.celery_process import WORKER_APP, CeleryWorker
from agents_persistence.tasks.devtools.redis_server import RedisServer

__all__ = ["REPO_ROOT", "WORKER_APP", "private_redis", "worker"]

#: The checkout's root: workers run there, so ``-A bench.noop_app`` imports.
REPO_ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A private redis-server without persistence (no AOF, no snapshots), ended on exit."""
    with RedisServer() as server:
        yield server


@contextmanager
def worker(
    env: dict[str, str],
    concurrency: int,
    queue: str,
    *,
    app: str = WORKER_APP,
    loglevel: str = "WARNING",
    pool: str = "prefork",
) -> Iterator[CeleryWorker]:
    """``celery -A <app> worker -P <pool> -c <concurrency> -Q <queue>`` with ``env`` (the
    settings), started (returns at once: the benchmark's own clock tells when it consumes)
    and stopped on exit, logs in a temp dir removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    proc = CeleryWorker(
        env,
        directory=directory,
        concurrency=concurrency,
        pool=pool,
        queues=[queue],
        loglevel=loglevel,
        app=app,
        cwd=REPO_ROOT,
        name=f"bench-{directory.name}",
    )
    try:
        yield proc.start()
    finally:
        proc.stop()
        shutil.rmtree(directory, ignore_errors=True)
