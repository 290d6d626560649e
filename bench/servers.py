"""Processes the benchmarks start: ``celery worker`` pools (a private ``redis-server`` comes
from :func:`agents_persistence.tasks.devtools.redis_server.start_embedded_redis`, as for the demo).

Every process is started here and ended by its PID (a worker by its process group, so the
pool children go too); nothing is looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["Worker"]


class Worker:
    """``celery -A <app> worker -c <n>`` as a subprocess in its own process group.

    Args:
        app: the ``-A`` argument (``tasks`` for the real worker).
        env: extra environment (the ``AGENTS_PERSISTENCE_*`` settings).
        concurrency: prefork pool size.
        queue: the queue to consume.
    """

    def __init__(
        self, app: str, env: dict[str, str], concurrency: int, queue: str, loglevel: str = "INFO"
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bench-worker-"))
        self.log = self.directory / "worker.log"
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-c", str(concurrency),
             "-P", "prefork", "-Q", queue, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", loglevel, "--logfile", str(self.log),
             "-n", f"bench-{os.getpid()}-{self.directory.name}@%h"],
            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logs that it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}); log: {self.log}")
            if self.log.exists() and "ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after {timeout}s; log: {self.log}")

    def stop(self) -> None:
        """End the worker's process group (TERM, then KILL) by its PID."""
        if self.proc.poll() is None:
            pgid = self.proc.pid  # start_new_session: the group id is the worker's PID
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children that outlived it
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
