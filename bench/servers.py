"""Processes the benchmarks start: a private ``redis-server`` and ``celery worker`` pools.

Every process is started here and ended by its PID (a worker by its process group, so the
pool children go too); nothing is looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["RedisServer", "Worker", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port, in a temp directory."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (or pass --redis-url)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--maxmemory", "0",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
