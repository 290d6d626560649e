"""Child processes the demo starts (a private Redis, a Celery worker) and ends by PID.

Each child runs in its own process group, so ending it reaches its own children too (a
prefork worker's pool) and a Ctrl-C in the terminal reaches only the demo, which then ends
its children in order. On Linux a child also gets SIGTERM if the demo itself dies without
cleaning up (``PR_SET_PDEATHSIG``), so not even a SIGKILLed demo leaves processes behind.
Nothing is ever looked up or signalled by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agents_persistence.config.settings import Settings
from pydantic import SecretStr

__all__ = [
    "WORKER_APP",
    "WorkerError",
    "WorkerProcess",
    "child_env",
    "end_process_group",
    "log_tail",
    "spawn",
]

#: What ``celery -A`` loads: the package whose ``app`` attribute is the configured app.
WORKER_APP = "agents_persistence.tasks"

_PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """The worker child exited or did not start consuming (the message has its log tail)."""


def _linked_to_parent(sig: signal.Signals) -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig))


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as its ``AGENTS_PERSISTENCE_*`` variables.

    Every field is written out, so a child builds exactly the same :class:`Settings` whatever
    this process got from its environment, ``.env`` or options (None as ``none``).
    """
    prefix = str(Settings.model_config.get("env_prefix", ""))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefix)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            text = "none"
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env[f"{prefix}{name}".upper()] = text
    return env


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    stdout_pipe: bool = False,
    death_signal: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group, output to ``log`` (stdout to a pipe if asked).

    ``death_signal`` reaches the child if the demo dies without ending it.
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=functools.partial(_linked_to_parent, death_signal),  # noqa: PLW1509 - runs before any agent thread starts
        )


def end_process_group(
    proc: subprocess.Popen[bytes], *, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Send ``sig`` to the child's process group, wait ``timeout`` s, then SIGKILL it.

    Returns the child's exit code (None if it could not be reaped).
    """
    if proc.poll() is None:
        # The child leads its own group (start_new_session), so its pgid is its pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
    # Pool processes that outlived their leader are still in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def log_tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of ``log`` (empty if it cannot be read)."""
    try:
        return "\n".join(log.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


class WorkerProcess:
    """A real ``celery -A agents_persistence.tasks worker`` child, configured through its
    environment.

    Args:
        env: the child's environment (``AGENTS_PERSISTENCE_*`` decide store, queue, ...).
        queue: the one queue it consumes.
        node: its node name (``name@host``), used to ping it.
        log: where its output goes.
        concurrency: prefork pool size.
    """

    def __init__(
        self, env: Mapping[str, str], *, queue: str, node: str, log: Path, concurrency: int = 2
    ) -> None:
        self.env, self.queue, self.node, self.log = dict(env), queue, node, log
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        """The command line (``python -m celery`` of this interpreter)."""
        return [
            sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
            "--loglevel", "WARNING", "--pool", "prefork", "-c", str(self.concurrency),
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "-Q", self.queue, "-n", self.node,
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        """PID of the worker's main process while it runs."""
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        # SIGKILL if the demo dies: a warm shutdown could hang on a broker that died with it,
        # and Celery's pool processes die with their parent (their own PDEATHSIG).
        self.proc = spawn(self.argv, log=self.log, env=self.env, death_signal=signal.SIGKILL)

    def wait_ready(self, ping: Callable[[], bool], timeout: float) -> None:
        """Call ``ping`` until it answers True; raise WorkerError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise WorkerError(f"the worker exited ({code}) at startup:\n{log_tail(self.log)}")
            if ping():
                return
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"the worker did not answer within {timeout:.0f}s:\n{log_tail(self.log)}"
                )

    def stop(self, timeout: float = 10.0) -> int | None:
        """Warm shutdown (SIGTERM to its group), SIGKILL after ``timeout``; idempotent."""
        proc, self.proc = self.proc, None
        return None if proc is None else end_process_group(proc, timeout=timeout)
