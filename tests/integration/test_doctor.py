"""``agents-persistence doctor`` against private redis-servers: one misconfigured (evicting,
no AOF), one good with a real worker consuming the namespace's queue, one unreachable."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from agents_persistence.tasks.devtools.binaries import free_port

from tests.integration.conftest import StackFactory
from tests.integration.test_cli import Result, script
from tests.support import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]

PREFIX = "AGENTS_PERSISTENCE_"


def doctor(env: dict[str, str], cwd: Path, *args: str) -> Result:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(PREFIX)}
    proc = subprocess.run(
        [script(), "doctor", *args],
        env={**base, **env, "COLUMNS": "300"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in result.both, result.both
    return result


def lines(result: Result, mark: str) -> dict[str, str]:
    """Check name -> its line, for the lines starting with ``mark`` (``ok`` or ``FAIL``)."""
    found = {}
    for line in result.out.splitlines():
        if line.startswith(mark + " "):
            name = line[len(mark) :].strip().split(":", 1)[0]
            found[name] = line
    return found


def test_a_misconfigured_redis_is_named_with_its_fixes(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server_factory(extra_args=["--maxmemory-policy", "allkeys-lru"])
    env = {f"{PREFIX}REDIS_URL": server.url, f"{PREFIX}NAMESPACE": "doctor-bad"}
    result = doctor(env, tmp_path, "--timeout", "1")
    assert result.code == 1, result.both
    failed = lines(result, "FAIL")
    assert set(failed) == {"maxmemory-policy", "persistence", "workers"}, result.out
    assert "allkeys-lru" in failed["maxmemory-policy"]
    assert "CONFIG SET maxmemory-policy noeviction" in result.out
    assert "CONFIG SET appendonly yes" in result.out
    assert "appendonly no" in failed["persistence"]
    passed = lines(result, "ok")
    assert {"store reachable", "broker reachable", "clock skew"} <= set(passed)
    assert "3 problem(s) found" in result.out


def test_a_good_deployment_passes(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = stack_factory()
    stack.server.client().config_set("appendonly", "yes")
    stack.worker(concurrency=1)
    result = doctor(stack.env, tmp_path, "--timeout", "5")
    assert result.code == 0, result.both
    assert not lines(result, "FAIL"), result.out
    passed = lines(result, "ok")
    assert set(passed) == {
        "store reachable",
        "maxmemory-policy",
        "persistence",
        "broker reachable",
        "workers",
        "visibility timeout",
        "tombstone lifetime",
        "clock skew",
    }
    assert f"consume queue {stack.queue}" in passed["workers"]
    assert "no problem found" in result.out


def test_a_short_visibility_timeout_fails(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = stack_factory(visibility_timeout_seconds=30)
    result = doctor(stack.env, tmp_path, "--timeout", "1")
    assert result.code == 1
    failed = lines(result, "FAIL")
    assert "visibility timeout" in failed, result.out
    assert "30s" in failed["visibility timeout"]


def test_an_unreachable_store_and_broker_fail_fast(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = doctor({f"{PREFIX}REDIS_URL": url}, tmp_path, "--timeout", "1")
    assert result.code == 1
    failed = lines(result, "FAIL")
    assert {"store reachable", "broker reachable", "workers"} <= set(failed), result.out
    assert "hunter2" not in result.both
