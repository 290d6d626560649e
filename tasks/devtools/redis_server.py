"""A private, throwaway Redis for the demo when no ``AGENTS_PERSISTENCE_REDIS_URL`` is set.

In order of preference:

``redis-server``
    The binary on ``PATH``: a real Redis on a free port of 127.0.0.1, in a temp dir, with
    persistence off (``--save "" --appendonly no``).
``fakeredis``
    fakeredis's TCP server (Python, Lua through lupa), in a child process so it does not
    share the demo's interpreter lock. Correct but slow: Celery's blocking pops crawl on it.
    fakeredis ships with the ``test`` extra (``pip install 'agents-persistence[test]'``).

Either runs as a child process that :meth:`EmbeddedRedis.close` ends by PID; the temp dir
goes with it. ``python -m agents_persistence.tasks.devtools.redis_server --serve-fakeredis`` is
the fakeredis child itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import redis
from agents_persistence.tasks.devtools.processes import end_process_group, log_tail, spawn

__all__ = ["EmbeddedKind", "EmbeddedRedis", "EmbeddedRedisError", "start_embedded_redis"]

EmbeddedKind = Literal["auto", "redis-server", "fakeredis"]

_HOST = "127.0.0.1"


class EmbeddedRedisError(RuntimeError):
    """No private Redis could be started (the message says why and what to install)."""


@dataclass
class EmbeddedRedis:
    """A running private Redis: what it is, where, and how to end it."""

    kind: Literal["redis-server", "fakeredis"]
    url: str
    version: str
    proc: subprocess.Popen[bytes]
    directory: Path
    binary: str = ""
    _closed: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """PID of the server process."""
        return self.proc.pid

    def describe(self) -> str:
        """One line for people: which server, which version, where."""
        where = self.url.removeprefix("redis://").removesuffix("/0")
        if self.kind == "redis-server":
            return (
                f"embedded redis-server {self.version} ({self.binary}) on {where}, pid {self.pid}"
            )
        return f"embedded fakeredis {self.version} TCP server on {where}, pid {self.pid}"

    def close(self) -> None:
        """End the server by PID and remove its temp dir (idempotent)."""
        if self._closed:
            return
        self._closed = True
        end_process_group(self.proc, timeout=5.0)
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


def find_redis_server() -> str | None:
    """Path of the ``redis-server`` on ``PATH``, or None."""
    return shutil.which("redis-server")


def fakeredis_available() -> bool:
    """True if fakeredis (with lupa, for Lua) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("fakeredis", "lupa"))


def start_embedded_redis(kind: EmbeddedKind = "auto", *, timeout: float = 10.0) -> EmbeddedRedis:
    """Start a private Redis of ``kind`` (``auto``: redis-server if on PATH, else fakeredis).

    Raises:
        EmbeddedRedisError: nothing suitable is installed, or it did not answer in time.
    """
    binary = find_redis_server() if kind in ("auto", "redis-server") else None
    if binary is not None:
        return _start_redis_server(binary, timeout)
    if kind == "redis-server":
        raise EmbeddedRedisError("no redis-server on PATH (install one, e.g. apt install redis)")
    if not fakeredis_available():
        raise EmbeddedRedisError(
            "no redis-server on PATH and fakeredis[lua] is not installed: install a "
            "redis-server, or `pip install 'agents-persistence[test]'`, or set "
            "AGENTS_PERSISTENCE_REDIS_URL to a Redis you run"
        )
    return _start_fakeredis(timeout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _start_redis_server(binary: str, timeout: float) -> EmbeddedRedis:
    directory = Path(tempfile.mkdtemp(prefix="agents-persistence-redis-"))
    log = directory / "redis.log"
    try:
        for _attempt in range(5):
            port = _free_port()
            argv = [
                binary,
                "--port", str(port), "--bind", _HOST, "--protected-mode", "yes",
                "--dir", str(directory), "--logfile", str(log), "--daemonize", "no",
                "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
            proc = spawn(argv, log=directory / "stdout.log")
            url = f"redis://{_HOST}:{port}/0"
            version = _wait_ready(proc, url, timeout, log)
            if version is not None:
                return EmbeddedRedis("redis-server", url, version, proc, directory, binary)
            # The port was taken between our probe and the bind: try another.
        raise EmbeddedRedisError(f"redis-server did not start:\n{log_tail(log)}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _wait_ready(
    proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path, *, fake: bool = False
) -> str | None:
    """The server's version once it answers as ``proc``; None if it exited at startup."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                end_process_group(proc, timeout=1.0)
                return None
            try:
                if fake:  # fakeredis has no INFO; it printed its own port, so it is ours
                    client.ping()
                    return "?"
                info = client.info("server")
                # Check the PID too: another server may hold the port we failed to bind.
                if int(info.get("process_id", proc.pid)) == proc.pid:
                    return str(info.get("redis_version", "?"))
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                end_process_group(proc, sig=signal.SIGKILL, timeout=5.0)
                raise EmbeddedRedisError(
                    f"the embedded Redis did not answer within {timeout}s:\n{log_tail(log)}"
                )
            time.sleep(0.02)
    finally:
        client.close()


def _start_fakeredis(timeout: float) -> EmbeddedRedis:
    import fakeredis

    directory = Path(tempfile.mkdtemp(prefix="agents-persistence-fakeredis-"))
    log = directory / "fakeredis.log"
    argv = [
        sys.executable,
        "-m",
        "agents_persistence.tasks.devtools.redis_server",
        "--serve-fakeredis",
    ]
    proc = spawn(argv, log=log, stdout_pipe=True)
    try:
        port = _read_port(proc, timeout)
        if port is None:
            raise EmbeddedRedisError(f"the fakeredis server did not start:\n{log_tail(log)}")
        url = f"redis://{_HOST}:{port}/0"
        version = getattr(fakeredis, "__version__", "?")
        if _wait_ready(proc, url, timeout, log, fake=True) is None:
            raise EmbeddedRedisError(f"the fakeredis server exited:\n{log_tail(log)}")
        return EmbeddedRedis("fakeredis", url, str(version), proc, directory)
    except BaseException:
        end_process_group(proc, timeout=2.0)
        shutil.rmtree(directory, ignore_errors=True)
        raise


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
