"""Real ``celery -A <app> worker|beat`` subprocesses, for the demo, the tests and bench/.

Each process starts in a session and process group of its own (its group id is its PID), so
a signal to the group reaches the prefork pool children too, and nothing else. Its
environment is explicit: :func:`~agents_persistence.tasks.devtools.processes.clean_environ`
plus the settings it is given, never the ``AGENTS_PERSISTENCE_*`` of whoever started it.

::

    env = settings_env(redis_url=url, namespace="t-1", queue="q-1")
    worker = CeleryWorker(env, directory=tmp).start()  # waits for its "ready." log line
    worker.child_pids()        # the pool processes, from /proc/<pid>/task/*/children
    worker.kill_child()        # SIGKILL one pool child (the main process notices)
    worker.pause()             # SIGSTOP the group (freeze); worker.resume() sends SIGCONT
    worker.kill_group()        # SIGKILL everything: the main process and its pool (a crash)
    worker.terminate()         # SIGTERM to the main process only (warm shutdown)
    worker.wait(timeout=15)    # its exit code
    worker.stop()              # always safe: SIGTERM, then SIGKILL of the group; idempotent

    beat = CeleryBeat(env, directory=tmp).start()  # its own ``--schedule`` file in ``tmp``

Rules kept, so fault-injection tests can rely on them:

* Signals go by PID or by process group id, never by name. The group leader is never reaped
  before its group has been signalled: a zombie leader keeps its PID, and so its group id,
  from being reused.
* :meth:`CeleryProcess.stop` leaves no member of the group alive, whatever state the process
  is in (running, stopped by SIGSTOP, already dead). An ``atexit`` hook stops processes left
  behind, and on Linux each process gets SIGKILL when the thread that started it ends
  (``PR_SET_PDEATHSIG``): start processes from a thread that outlives them.
* Logs: Celery's ``--logfile`` (``<name>.log``; pool children write to it too) and the
  process's own stdout/stderr (``<name>.out``) live in ``directory``;
  :meth:`CeleryProcess.log_tail` shows both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Self

from agents_persistence.tasks.devtools.process_group import ProcessGroup
from agents_persistence.tasks.devtools.processes import (
    ENV_PREFIX,
    clean_environ,
    spawn,
)

__all__ = ["WORKER_APP", "CeleryBeat", "CeleryProcess", "CeleryProcessError", "CeleryWorker"]

#: What ``celery -A`` loads by default: the package whose ``app`` is the configured app.
WORKER_APP = "agents_persistence.tasks"


class CeleryProcessError(RuntimeError):
    """A Celery process did not start or misbehaved (the message carries its log tail)."""


class CeleryProcess(ProcessGroup):
    """One ``celery -A <app> <command>`` subprocess (not started until :meth:`start`).

    Args:
        command: the Celery sub-command and its options, after ``-A <app>``.
        env: variables for the process on top of ``clean_environ()`` (the settings).
        directory: where its log files go.
        name: file name stem of its logs; unique per process in ``directory``.
        ready_marker: text whose appearance in the log means the process is ready; None:
            :meth:`start` returns at once (check readiness with :meth:`wait_until`).
        startup_timeout: seconds to wait for ``ready_marker``.
        app: the ``-A`` argument.
        cwd: working directory (e.g. the checkout's root, for an app module outside the
            installed package); default: this process's.
    """

    kind = "celery"
    error = CeleryProcessError
    #: Working directory when ``cwd`` is not given (None: this process's).
    default_cwd: ClassVar[str | os.PathLike[str] | None] = None

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        directory: str | os.PathLike[str],
        name: str,
        ready_marker: str | None,
        startup_timeout: float = 30.0,
        app: str = WORKER_APP,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        super().__init__(name)
        self.env = dict(env)
        self.ready_marker = ready_marker
        self.startup_timeout = startup_timeout
        self.app = app
        self.cwd = cwd if cwd is not None else self.default_cwd
        self.log_path = self.directory / f"{name}.log"
        self.output_path = self.directory / f"{name}.out"
        self.argv = [sys.executable, "-m", "celery", "-A", app, *command]
        self.argv += ["--logfile", str(self.log_path)]

    # -- facts ----------------------------------------------------------------------------
    def log_text(self) -> str:
        """The whole Celery log so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the Celery log and of the process's own output."""
        parts = []
        for path in (self.log_path, self.output_path):
            with contextlib.suppress(OSError):
                text = path.read_text("utf-8", "replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def log_count(self, text: str) -> int:
        """How many times ``text`` appears in the Celery log."""
        return self.log_text().count(text)

    def wait_for_log(self, text: str, timeout: float = 10.0, *, count: int = 1) -> None:
        """Block until ``text`` appears ``count`` times in the log.

        Raises:
            CeleryProcessError: not within ``timeout`` seconds, or the process exited.
        """
        self.wait_until(lambda: self.log_count(text) >= count, timeout, f"{text!r} x{count}")

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Call ``check`` until it returns True (``what`` names it in errors).

        Raises:
            CeleryProcessError: not within ``timeout`` seconds, or the process exited.
        """
        deadline = time.monotonic() + timeout
        while not check():
            if not self.running:
                raise CeleryProcessError(
                    f"{self.name} exited while waiting for {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise CeleryProcessError(
                    f"{self.name}: no {what} within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        state = "running" if self.running else "not running"
        return f"{type(self).__name__}({self.name!r}, pid={pid}, {state})"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the process and wait until its log shows ``ready_marker`` (if set)."""
        if self._proc is not None:
            raise CeleryProcessError(f"{self.name} was already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc = spawn(
            self.argv,
            log=self.output_path,
            env=clean_environ(self.env),
            cwd=self.cwd,
            # SIGKILL: a warm shutdown could hang on a broker that died with the parent,
            # and Celery's pool processes die with their own parent.
            death_signal=signal.SIGKILL,
        )
        self._track()
        if self.ready_marker is not None:
            try:
                self.wait_for_log(self.ready_marker, self.startup_timeout)
            except CeleryProcessError:
                self.stop()
                raise
        return self


class CeleryWorker(CeleryProcess):
    """``celery -A <app> worker``; ready once its log says ``ready.`` (logged at INFO: with a
    quieter ``loglevel``, :meth:`start` returns at once and the caller checks readiness).

    Args:
        env: the settings variables; the queue consumed is ``AGENTS_PERSISTENCE_QUEUE``
            unless ``queues`` says otherwise.
        directory: where the logs go.
        concurrency: pool size (``-c``).
        pool: ``prefork``, ``solo``, ``threads``, ... (``-P``).
        queues: queues to consume (``-Q``).
        extra_args: more command-line options.
        name: log file stem and node name prefix (``<name>@<host>``; default
            ``worker-<uuid8>``).
        loglevel: ``-l``; ``info`` logs one line per task (see :meth:`task_count`).
        startup_timeout, app, cwd: as for :class:`CeleryProcess`.
    """

    kind = "worker"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        directory: str | os.PathLike[str],
        concurrency: int = 2,
        pool: str = "prefork",
        queues: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        loglevel: str = "info",
        startup_timeout: float = 30.0,
        app: str = WORKER_APP,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        name = name if name is not None else f"worker-{uuid.uuid4().hex[:8]}"
        queue_list = list(queues) if queues is not None else []
        if not queue_list and f"{ENV_PREFIX}QUEUE" in env:
            queue_list = [env[f"{ENV_PREFIX}QUEUE"]]
        command = [
            "worker",
            "-n", f"{name}@%h",
            "-c", str(concurrency),
            "-P", pool,
            "-l", loglevel,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ]  # fmt: skip
        if queue_list:
            command += ["-Q", ",".join(queue_list)]
        super().__init__(
            [*command, *extra_args],
            env=env,
            directory=directory,
            name=name,
            ready_marker=" ready." if loglevel.lower() in ("debug", "info") else None,
            startup_timeout=startup_timeout,
            app=app,
            cwd=cwd,
        )
        self.concurrency = concurrency
        self.pool = pool
        self.queues = queue_list

    def task_count(self, task: str, outcome: str = "succeeded") -> int:
        """How many ``task`` runs the log reports with ``outcome`` (``succeeded``, ``retry``,
        ``raised``...): Celery logs one INFO line per task run."""
        return sum(
            1
            for line in self.log_text().splitlines()
            if f"Task {task}[" in line and f"] {outcome}" in line
        )

    def wait_for_tasks(
        self, task: str, count: int, timeout: float = 30.0, outcome: str = "succeeded"
    ) -> None:
        """Block until the log reports ``count`` runs of ``task`` with ``outcome``."""
        self.wait_until(
            lambda: self.task_count(task, outcome) >= count,
            timeout,
            f"{count} x {task} {outcome}",
        )


class CeleryBeat(CeleryProcess):
    """``celery -A <app> beat`` with a schedule file of its own in ``directory``.

    Ready once its log says ``beat: Starting...``; every due task is logged as
    ``Scheduler: Sending due task <name>``.
    """

    kind = "beat"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        directory: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        name: str | None = None,
        max_interval: int = 1,
        startup_timeout: float = 30.0,
        app: str = WORKER_APP,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        name = name if name is not None else f"beat-{uuid.uuid4().hex[:8]}"
        schedule = Path(directory) / f"{name}-schedule"
        command = ["beat", "-s", str(schedule), "-l", "info", "--max-interval", str(max_interval)]
        super().__init__(
            [*command, *extra_args],
            env=env,
            directory=directory,
            name=name,
            ready_marker="beat: Starting...",
            startup_timeout=startup_timeout,
            app=app,
            cwd=cwd,
        )
        self.schedule_path = schedule

    def sent_count(self, task: str) -> int:
        """How many times beat has sent ``task`` so far."""
        return self.log_count(f"Sending due task {task}")
