"""Child processes in their own process group, ended by PID, and the environment they get.

Every child starts in a new session (``start_new_session``), so its process group id is its
PID: a signal to the group reaches its own children (a prefork worker's pool) and nothing
else, and a Ctrl-C in the terminal reaches only the parent, which then ends its children in
order. On Linux a child can also be told to receive a signal when the thread that started it
ends (``PR_SET_PDEATHSIG``), so not even a SIGKILLed demo leaves processes behind. Nothing is
ever looked up or signalled by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents_persistence.config.settings import Settings
from pydantic import SecretStr

__all__ = [
    "ENV_PREFIX",
    "child_env",
    "clean_environ",
    "end_process_group",
    "group_pids",
    "log_tail",
    "pid_alive",
    "settings_env",
    "spawn",
]

#: Prefix of the variables :class:`Settings` reads (``AGENTS_PERSISTENCE_``).
ENV_PREFIX = str(Settings.model_config.get("env_prefix", "")).upper()

_PR_SET_PDEATHSIG = 1


def _env_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(**fields: Any) -> dict[str, str]:
    """``AGENTS_PERSISTENCE_<FIELD>`` variables for the given :class:`Settings` fields.

    ``None`` values are left out; secrets are unwrapped; booleans become ``true``/``false``.
    """
    return {
        f"{ENV_PREFIX}{name.upper()}": _env_text(value)
        for name, value in fields.items()
        if value is not None
    }


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as its ``AGENTS_PERSISTENCE_*`` variables.

    Every field is written out, so a child builds exactly the same :class:`Settings` whatever
    this process got from its environment, ``.env`` or options (None as ``none``).
    """
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    for name in Settings.model_fields:
        env[f"{ENV_PREFIX}{name.upper()}"] = _env_text(getattr(settings, name))
    return env


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``AGENTS_PERSISTENCE_*`` (nor ``CELERY_*``)
    variable, unbuffered, plus ``extra``: a child sees only the settings it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "CELERY_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _linked_to_parent(sig: signal.Signals) -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout_pipe: bool = False,
    death_signal: signal.Signals | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session and process group; output appended to ``log``.

    Args:
        stdout_pipe: stdout to a pipe (stderr still goes to ``log``).
        death_signal: on Linux, the signal the child gets when the *thread* that started it
            ends; None for none. Only for children started from a thread that lives as
            long as they should (a background thread that restarts a server must not).
    """
    preexec = None
    if death_signal is not None and sys.platform.startswith("linux"):
        preexec = functools.partial(_linked_to_parent, death_signal)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only prctl, before any thread of the child
        )


def end_process_group(
    proc: subprocess.Popen[bytes], *, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Send ``sig`` (and SIGCONT, in case it is stopped) to the child's process group, wait
    ``timeout`` s, then SIGKILL the group; returns the exit code (None if not reaped)."""
    if proc.poll() is None:
        # The child leads its own group (start_new_session), and an unreaped leader keeps
        # the group id from being reused: the signal reaches only its own processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
            os.killpg(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
    # Children that outlived their leader are still in the group.
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


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (from ``/proc``)."""
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
