"""Celery's own command line (``celery -A agents_persistence.tasks inspect|status ...``) as
an operator runs it, against the workers a test started.

Each call is a fresh ``python -m celery`` subprocess with the workers' settings as its
environment (and nothing else of this process's ``AGENTS_PERSISTENCE_*``), run from the
repository root. Replies are read with ``--json``.

::

    node = node_name(worker)                    # "worker-1a2b3c4d@myhost"
    replies = remote_control(env, ["inspect", "ping"], destination=node)
    reply = wait_for_reply(env, ["inspect", "ping"], node, timeout=60)   # {"ok": "pong"}
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agents_persistence.tasks.devtools.celery_process import WORKER_APP, CeleryWorker
from agents_persistence.tasks.devtools.processes import clean_environ
from celery.utils.nodenames import host_format

from tests.support.celery_worker import REPO_ROOT

__all__ = ["celery_command", "node_name", "remote_control", "wait_for_reply"]


def node_name(worker: CeleryWorker) -> str:
    """The node name ``worker`` answers remote control under (``<name>@<host>``)."""
    return str(host_format(f"{worker.name}@%h"))


def celery_command(
    env: Mapping[str, str], args: Sequence[str], *, timeout: float = 60.0, app: str = WORKER_APP
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m celery -A <app> <args>`` with ``env`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, *args],
        env=clean_environ(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def remote_control(
    env: Mapping[str, str],
    command: Sequence[str],
    *,
    destination: str | None = None,
    reply_timeout: float = 2.0,
) -> dict[str, Any]:
    """``celery -A ... <command> --json`` (``inspect ping``, ``status``, ...): the replies by
    node name; empty if no node replied within ``reply_timeout`` seconds."""
    args = [*command, "--json", "--timeout", str(reply_timeout)]
    if destination is not None:
        args += ["--destination", destination]
    try:
        done = celery_command(env, args, timeout=reply_timeout + 60.0)
    except subprocess.TimeoutExpired:
        return {}  # the broker does not answer (yet)
    text = done.stdout.lstrip()
    if not text.startswith("{"):
        return {}  # "Error: No nodes replied within time constraint" goes to stderr
    # ``status`` prints "N nodes online." after the JSON.
    replies, _ = json.JSONDecoder().raw_decode(text)
    return dict(replies)


def wait_for_reply(
    env: Mapping[str, str],
    command: Sequence[str],
    node: str,
    *,
    timeout: float = 60.0,
    reply_timeout: float = 2.0,
) -> Any:
    """Repeat ``command`` for ``node`` until it replies; returns its reply.

    Raises:
        AssertionError: no reply from ``node`` within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        replies = remote_control(env, command, destination=node, reply_timeout=reply_timeout)
        if node in replies:
            return replies[node]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{node} did not answer `celery {' '.join(command)}` within {timeout}s "
                f"({attempts} attempts; last replies: {replies})"
            )
        time.sleep(0.2)
