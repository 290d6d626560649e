"""A child process that leads its own process group, signalled and reaped by PID.

The base of :class:`~agents_persistence.tasks.devtools.celery_process.CeleryProcess`: every
way a test or the demo ends, freezes or crashes a child and its descendants, keeping one
rule: the group leader is never reaped before its group has been signalled (a zombie leader
keeps its PID, and so its group id, from being reused), so a signal to the group never
reaches a stranger.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
import weakref
from pathlib import Path

from agents_persistence.tasks.devtools.processes import group_pids, pid_alive

__all__ = ["ProcessGroup"]

#: Processes started and not yet stopped, for the atexit safety net.
_LIVE: weakref.WeakSet[ProcessGroup] = weakref.WeakSet()


class ProcessGroup:
    """A child started with ``start_new_session`` (its group id is its PID), once a
    subclass sets ``_proc``.

    Subclasses name it (:attr:`name`), say which error they raise (:attr:`error`) and may
    show their logs in errors (:meth:`log_tail`).
    """

    #: Raised when the process misbehaves (a subclass's own error type).
    error: type[Exception] = RuntimeError

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None

    def log_tail(self, lines: int = 40) -> str:
        """What to show of the process's output in errors (nothing here)."""
        return ""

    def _track(self) -> None:
        """Have the atexit hook stop this process if nobody else does."""
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        """PID of the main process (also its process group id)."""
        if self._proc is None:
            raise self.error(f"{self.name} was never started")
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
        if self._proc is None or self._returncode is not None:
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
        """Every live process of the group (meaningful until shortly after the main process
        is reaped; then the id may be reused)."""
        return [] if self._proc is None else group_pids(self.pgid)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the main process only (by PID)."""
        if not self._exited():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM to the main process: Celery's warm shutdown. Does not wait (:meth:`wait`)."""
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
                raise self.error(f"{self.name} has no child process to kill")
            pid = children[0]
        elif pid not in children:
            raise self.error(f"{pid} is not a child of {self.name} ({children})")
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_group(self, timeout: float = 10.0) -> int | None:
        """SIGKILL the whole group (a crash of the process and its pool), reap the main
        process and wait until no member of the group is alive; returns the exit code."""
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
            raise self.error(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                raise self.error(
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
                with contextlib.suppress(self.error):
                    return self.wait(timeout)
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
        while left := group_pids(self.pgid):
            if time.monotonic() > deadline:
                raise self.error(f"{self.name}: group members still alive: {left}")
            time.sleep(0.02)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)
