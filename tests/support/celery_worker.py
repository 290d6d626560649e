"""Real ``celery -A agents_persistence.tasks worker`` and ``celery -A agents_persistence.tasks
beat`` subprocesses for tests.

Each process runs from the repository root (so ``-A agents_persistence.tasks`` imports this
checkout) with an
explicit environment: the caller's ``AGENTS_PERSISTENCE_*`` variables only, never the ones
of the shell that runs pytest. It starts in a session and process group of its own
(``start_new_session=True``), so its process group id is its PID and a signal to the group
reaches the prefork pool children too, and nothing else.

::

    env = settings_env(redis_url=server.url, namespace="t-1", queue="q-1")
    worker = CeleryWorker(env, directory=tmp_path, concurrency=2).start()  # waits for "ready."
    worker.child_pids()        # the pool processes, from /proc/<pid>/task/*/children
    worker.kill_child()        # SIGKILL one pool child (the main process notices)
    worker.pause()             # SIGSTOP the group (freeze); worker.resume() sends SIGCONT
    worker.kill_group()        # SIGKILL everything: the main process and its pool (a crash)
    worker.terminate()         # SIGTERM to the main process only (warm shutdown)
    worker.wait(timeout=15)    # its exit code
    worker.stop()              # always safe: SIGTERM, then SIGKILL of the group; idempotent

    beat = CeleryBeat(env, directory=tmp_path).start()  # its own temp ``--schedule`` file

Rules this module keeps, so fault-injection tests can rely on them:

* Signals go by PID or by process group id, never by name. The group leader (the main
  process) is never reaped before its group has been signalled: a zombie leader keeps its
  PID, and so its group id, from being reused.
* :meth:`CeleryProcess.stop` leaves no member of the group alive, whatever state the process
  is in (running, stopped by SIGSTOP, already dead). An ``atexit`` hook stops processes a
  crashed test left behind, and on Linux each process gets SIGKILL if the thread that started
  it ends (``PR_SET_PDEATHSIG``) — start processes from the test's own thread.
* Logs: Celery's ``--logfile`` (``<name>.log``; every pool child writes to it too) and the
  process's own stdout/stderr (``<name>.out``, startup errors and tracebacks) live in
  ``directory``; :meth:`CeleryProcess.log_tail` shows both in assertion messages.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import redis
from pydantic import SecretStr

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

# : The checkout's root: the working directory of every process, so ``-A
# agents_persistence.tasks`` imports it.
REPO_ROOT = Path(__file__).resolve().parents[2]

_ENV_PREFIX = "AGENTS_PERSISTENCE_"
_PR_SET_PDEATHSIG = 1

#: Processes started and not yet stopped, for the atexit safety net.
_LIVE: weakref.WeakSet[CeleryProcess] = weakref.WeakSet()


class CeleryProcessError(RuntimeError):
    """A Celery process did not start or misbehaved (the message carries its log tail)."""


def settings_env(**fields: Any) -> dict[str, str]:
    """``AGENTS_PERSISTENCE_<FIELD>`` variables for :class:`config.Settings` fields.

    ``None`` values are left out; secrets are unwrapped; booleans become ``true``/``false``.
    """
    env: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[_ENV_PREFIX + name.upper()] = text
    return env


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``AGENTS_PERSISTENCE_*`` (nor ``CELERY_*``)
    variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((_ENV_PREFIX, "CELERY_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(")") + 2] not in "ZX"


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from ``/proc``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is the state, fields[2] the process group.
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(int(entry.name))
    return sorted(found)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class CeleryProcess:
    """One ``celery -A agents_persistence.tasks <command>`` subprocess (not started until
    :meth:`start`).

    Args:
        command: the Celery sub-command and its options, after ``-A agents_persistence.tasks``.
        env: variables for the process on top of :func:`clean_environ` (the settings).
        directory: where its log files go (a test's ``tmp_path``).
        name: file name stem of its logs; unique per process in ``directory``.
        ready_marker: text whose appearance in the log means the process is ready.
        startup_timeout: seconds to wait for ``ready_marker``.
    """

    kind = "celery"

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        directory: str | os.PathLike[str],
        name: str,
        ready_marker: str,
        startup_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.env = dict(env)
        self.ready_marker = ready_marker
        self.startup_timeout = startup_timeout
        self.log_path = self.directory / f"{name}.log"
        self.output_path = self.directory / f"{name}.out"
        self.argv = [sys.executable, "-m", "celery", "-A", "agents_persistence.tasks", *command]
        self.argv += ["--logfile", str(self.log_path)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None

    # -- facts ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """PID of the main process (also its process group id)."""
        if self._proc is None:
            raise CeleryProcessError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def pgid(self) -> int:
        """The process group of the main process and its children (== :attr:`pid`)."""
        return self.pid

    @property
    def running(self) -> bool:
        """True while the main process has not exited (stopped by SIGSTOP counts)."""
        return self._proc is not None and self._returncode is None and not self._exited()

    @property
    def returncode(self) -> int | None:
        """Exit code once reaped by :meth:`wait`, :meth:`kill_group` or :meth:`stop`."""
        return self._returncode

    def _exited(self) -> bool:
        """Whether the main process exited, without reaping it (its PID stays reserved)."""
        if self._proc is None:
            return True
        if self._returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def child_pids(self) -> list[int]:
        """Direct children of the main process (the pool processes of a prefork worker)."""
        if self._proc is None or self._exited():
            return []
        pids: list[int] = []
        for path in Path(f"/proc/{self.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in path.read_text().split())
        return sorted(p for p in set(pids) if pid_alive(p))

    def group_pids(self) -> list[int]:
        """Every live process of the group (main process and descendants that stayed in it).

        Meaningful until shortly after the main process is reaped (then the id may be reused).
        """
        if self._proc is None:
            return []
        return group_pids(self.pgid)

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
        self._wait_until(lambda: self.log_count(text) >= count, timeout, f"{text!r} x{count}")

    def _wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
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
        """Start the process and wait until its log shows it is ready."""
        if self._proc is not None:
            raise CeleryProcessError(f"{self.name} was already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.output_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=clean_environ(self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        _LIVE.add(self)
        try:
            self.wait_for_log(self.ready_marker, self.startup_timeout)
        except CeleryProcessError:
            self.stop()
            raise
        return self

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the main process only (by PID)."""
        if not self._exited():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM to the main process: Celery's warm shutdown (finish running tasks,
        give reserved messages back, then exit). Does not wait; see :meth:`wait`."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the main process only; its pool children are left orphaned."""
        self.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the whole group: every process freezes where it is (see :meth:`resume`)."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the whole group after :meth:`pause`."""
        self._signal_group(signal.SIGCONT)

    def kill_child(self, pid: int | None = None) -> int:
        """SIGKILL one child (default: the first pool process); returns its PID."""
        children = self.child_pids()
        if pid is None:
            if not children:
                raise CeleryProcessError(f"{self.name} has no child process to kill")
            pid = children[0]
        elif pid not in children:
            raise CeleryProcessError(f"{pid} is not a child of {self.name} ({children})")
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_group(self, timeout: float = 10.0) -> int | None:
        """SIGKILL to the whole process group (a crash of the worker and its pool), then
        reap the main process and wait until no member of the group is alive.

        Returns the main process's exit code (``-9``).
        """
        if self._proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        code = self._reap(timeout)
        self._await_group_gone(timeout)
        return code

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the main process to exit (after :meth:`terminate`, say), SIGKILL what is
        left of its group, and return the exit code.

        Raises:
            CeleryProcessError: still running after ``timeout`` seconds (it is left running).
        """
        if self._proc is None:
            raise CeleryProcessError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                raise CeleryProcessError(
                    f"{self.name} still running {timeout}s after the request:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        # The leader is a zombie now: its group id cannot be reused, so this reaches only
        # leftovers of its own group.
        self._signal_group(signal.SIGKILL)
        code = self._reap(timeout)
        self._await_group_gone(timeout)
        assert code is not None
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """End the process whatever its state: SIGTERM (and SIGCONT, in case it was paused),
        wait up to ``timeout`` s, then SIGKILL the group. Idempotent; use in teardown."""
        if self._proc is None:
            return None
        if self._returncode is not None:
            # Already reaped (kill_group, wait): its group was emptied then, and its id may
            # belong to someone else by now.
            _LIVE.discard(self)
            return self._returncode
        try:
            if not self._exited():
                self.send_signal(signal.SIGTERM)
                self._signal_group(signal.SIGCONT)
                try:
                    return self.wait(timeout)
                except CeleryProcessError:
                    pass
            self._signal_group(signal.SIGKILL)
            code = self._reap(timeout)
            self._await_group_gone(timeout)
            return code
        finally:
            _LIVE.discard(self)

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped (running or zombie): then the group id is ours.
        if self._proc is not None and self._returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)

    def _reap(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        if self._returncode is None:
            self._returncode = self._proc.wait(timeout)
        return self._returncode

    def _await_group_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = group_pids(self.pgid)
            if not left:
                return
            if time.monotonic() > deadline:
                raise CeleryProcessError(f"{self.name}: group members still alive: {left}")
            time.sleep(0.02)


class CeleryWorker(CeleryProcess):
    """``celery -A agents_persistence.tasks worker``: ready once its log says ``ready.``.

    Args:
        env: the settings variables (see :func:`settings_env`); the queue consumed is
            ``AGENTS_PERSISTENCE_QUEUE`` unless ``queues`` says otherwise.
        directory: where the logs go.
        concurrency: pool size (``-c``).
        pool: ``prefork``, ``solo``, ``threads``, ... (``-P``).
        queues: queues to consume (``-Q``).
        extra_args: more command-line options.
        name: log file stem and node name prefix (default: ``worker-<uuid8>``).
        loglevel: ``-l``; the readiness check needs ``info`` or more verbose.
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
    ) -> None:
        name = name if name is not None else f"worker-{uuid.uuid4().hex[:8]}"
        queue_list = list(queues) if queues is not None else []
        if not queue_list and _ENV_PREFIX + "QUEUE" in env:
            queue_list = [env[_ENV_PREFIX + "QUEUE"]]
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
            ready_marker=" ready.",
            startup_timeout=startup_timeout,
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
        self._wait_until(
            lambda: self.task_count(task, outcome) >= count,
            timeout,
            f"{count} x {task} {outcome}",
        )


class CeleryBeat(CeleryProcess):
    """``celery -A agents_persistence.tasks beat`` with a schedule file of its own in
    ``directory``.

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
    ) -> None:
        name = name if name is not None else f"beat-{uuid.uuid4().hex[:8]}"
        schedule = Path(directory) / f"{name}-schedule"
        command = [
            "beat",
            "-s", str(schedule),
            "-l", "info",
            "--max-interval", str(max_interval),
        ]  # fmt: skip
        super().__init__(
            [*command, *extra_args],
            env=env,
            directory=directory,
            name=name,
            ready_marker="beat: Starting...",
            startup_timeout=startup_timeout,
        )
        self.schedule_path = schedule

    def sent_count(self, task: str) -> int:
        """How many times beat has sent ``task`` so far."""
        return self.log_count(f"Sending due task {task}")


def kill_outside_pop_window(
    worker: CeleryWorker, broker: redis.Redis, queue: str, *, timeout: float = 30.0
) -> int:
    """SIGKILL ``worker``'s group (Redis broker) at a moment when every message it has
    popped is registered as unacknowledged, and at least one is; returns how many tries
    found a message in between.

    kombu's Redis transport takes a message with ``BRPOP`` and only afterwards records it in
    the ``unacked`` hash (a second round trip): a crash in between loses that message, and
    no visibility timeout brings it back (celery/kombu#305). Measured here: about one
    SIGKILL in four under a steady stream. A test of what the transport does promise
    (unacknowledged messages come back) kills the worker only outside that window: it
    freezes the group (SIGSTOP), reads the broker's command counters in one transaction
    (popped = ``LPUSH`` calls - queue length; registered = ``HSET`` calls), and kills if
    they agree; otherwise it lets the worker run a moment and tries again.

    Needs a private broker server with no other producer or consumer: the counters are
    server-wide, and every ``LPUSH`` must be a hand-off to ``queue``.

    Raises:
        CeleryProcessError: no such moment within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    in_window = 0
    while True:
        worker.pause()
        pipe = broker.pipeline(transaction=True)
        pipe.info("commandstats")
        pipe.llen(queue)
        pipe.hlen("unacked")
        stats, queued, unacked = pipe.execute()
        pushed = int(stats.get("cmdstat_lpush", {}).get("calls", 0))
        registered = int(stats.get("cmdstat_hset", {}).get("calls", 0))
        if pushed - int(queued) == registered and int(unacked) > 0:
            worker.kill_group()
            return in_window
        in_window += pushed - int(queued) != registered
        worker.resume()
        if time.monotonic() > deadline:
            raise CeleryProcessError(
                f"{worker.name}: no moment outside the pop window within {timeout}s "
                f"({in_window} tries inside it)"
            )
        time.sleep(random.uniform(0.001, 0.01))


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)
