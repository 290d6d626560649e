"""``agents-persistence`` as a user runs it: the installed console script, in a subprocess.

Operator commands run against the machine's Redis (127.0.0.1:6379) in a fresh namespace whose
keys are deleted afterwards; the demo runs once against that Redis and once with no
``AGENTS_PERSISTENCE_REDIS_URL`` (its own embedded server).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer, TodoItem
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.devtools.redis_server import fakeredis_available, find_redis_server
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import RedisDeadLetters, make_entry

from tests.support import skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.redis]

PREFIX = "AGENTS_PERSISTENCE_"
SECRET = "s3cret"


@dataclass
class Result:
    """What a command printed and returned."""

    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def script() -> str:
    """The installed ``agents-persistence`` next to this interpreter."""
    found = shutil.which("agents-persistence", path=str(Path(sys.executable).parent))
    if found is None:
        skip_or_fail("the agents-persistence console script is not installed (pip install -e .)")
    return found


def run(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path, timeout: float = 60.0
) -> Result:
    """Run the console script with a clean environment plus ``env``; never a traceback."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(PREFIX)}
    proc = subprocess.run(
        [script(), *args],
        env={**base, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in result.both, result.both
    return result


@pytest.fixture
def cli_env(real_redis_url: str, namespace: str) -> dict[str, str]:
    """The machine's Redis and this test's namespace, as a user would configure them."""
    return {f"{PREFIX}REDIS_URL": real_redis_url, f"{PREFIX}NAMESPACE": namespace}


@pytest.fixture
def store(real_redis_url: str, namespace: str) -> Iterator[RedisCheckpointer]:
    checkpointer = RedisCheckpointer.from_url(real_redis_url, namespace=namespace)
    yield checkpointer
    checkpointer.close()


def state(n: int) -> AgentStateSnapshot:
    return AgentStateSnapshot(
        todos=[TodoItem.pending(f"task {n}")], files={"a.txt": "x" * n}, scratchpad={"n": n}
    )


# -- threads --------------------------------------------------------------------------------------
def test_list_and_show(cli_env: dict[str, str], store: RedisCheckpointer, tmp_path: Path) -> None:
    for i in range(3):
        store.save_state(f"t-{i}", state(i), version=10 + i)

    listed = run("list", env=cli_env, cwd=tmp_path)
    assert listed.code == 0
    assert sorted(listed.out.split()) == ["t-0", "t-1", "t-2"]
    assert "3 thread(s)" in listed.err

    limited = run("list", "--limit", "2", env=cli_env, cwd=tmp_path)
    assert limited.code == 0
    assert len(limited.out.split()) == 2
    assert "--limit 0" in limited.err

    shown = run("show", "t-2", env=cli_env, cwd=tmp_path)
    assert shown.code == 0, shown.both
    head, _, body = shown.out.partition("{")
    assert "version:   12" in head
    assert "saved_at:" in head
    assert json.loads("{" + body) == state(2).model_dump(mode="json")


def test_show_missing_and_delete(
    cli_env: dict[str, str], store: RedisCheckpointer, tmp_path: Path
) -> None:
    store.save_state("doomed", state(1), version=5)

    missing = run("show", "never-saved", env=cli_env, cwd=tmp_path)
    assert missing.code == 1
    assert missing.err.startswith("error: no live state for thread 'never-saved'")

    deleted = run("delete", "doomed", env=cli_env, cwd=tmp_path)
    assert deleted.code == 0, deleted.both
    assert "tombstone" in deleted.out
    assert store.load_state("doomed") is None
    assert store.stored_versions(["doomed"])["doomed"] > 5  # the tombstone keeps older saves out

    stale = run("delete", "doomed", "--version", "3", env=cli_env, cwd=tmp_path)
    assert stale.code == 1
    assert "newer version" in stale.err


def test_stats_and_cleanup(
    cli_env: dict[str, str],
    store: RedisCheckpointer,
    real_redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    store.save_state("live", state(1))
    short = RedisCheckpointer.from_url(real_redis_url, namespace=namespace, ttl=0.05)
    short.save_state("expiring", state(2))
    short.close()
    time.sleep(0.15)

    before = run("stats", env=cli_env, cwd=tmp_path)
    assert before.code == 0, before.both
    assert re.search(r"live threads\s+│\s+1\b", before.out), before.out
    assert re.search(r"expired, not yet cleaned\s+│\s+1\b", before.out), before.out
    assert re.search(r"dead letters\s+│\s+0\b", before.out)
    assert "redis memory" in before.out

    cleaned = run("cleanup", env=cli_env, cwd=tmp_path)
    assert cleaned.code == 0
    assert cleaned.out.startswith("removed 1 expired index entries")
    assert store.list_threads() == ["live"]


# -- dead letters ---------------------------------------------------------------------------------
@pytest.fixture
def dead_letters(real_redis: redis.Redis, store: RedisCheckpointer) -> RedisDeadLetters:
    return RedisDeadLetters(
        real_redis, store.keys.dead_letters, max_length=100, retry=RetryPolicy()
    )


@pytest.fixture
def queue(real_redis: redis.Redis) -> Iterator[str]:
    """A queue of its own on the machine's Redis (as broker); its kombu keys go afterwards."""
    name = f"t-cli-{uuid.uuid4().hex[:8]}"
    yield name
    real_redis.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")


def test_dead_letters_list_replay_purge(
    cli_env: dict[str, str],
    dead_letters: RedisDeadLetters,
    queue: str,
    real_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    save = {
        "namespace": cli_env[f"{PREFIX}NAMESPACE"],
        "thread_id": "t-1",
        "version": 7,
        "state": "{}",
        "saved_at_ms": 1,
    }
    task_entry = make_entry("store down", "StoreUnavailable", task=SAVE_TASK, args=[], kwargs=save)
    raw_entry = make_entry(
        "message could not be decoded",
        "ContentDisallowed",
        task=None,
        body_base64="gASV",
        content_type="application/x-python-serialize",
    )
    dead_letters.push(task_entry)
    dead_letters.push(raw_entry)
    env = {**cli_env, f"{PREFIX}QUEUE": queue}

    table = run("dead-letters", "list", env=env, cwd=tmp_path)
    assert table.code == 0
    assert "2 dead letter(s)" in table.out
    listed = run("dead-letters", "list", "--json", env=env, cwd=tmp_path)
    assert [e["id"] for e in json.loads(listed.out)] == [raw_entry["id"], task_entry["id"]]

    refused = run("dead-letters", "replay", raw_entry["id"], env=env, cwd=tmp_path)
    assert refused.code == 1
    assert "cannot be replayed" in refused.err
    assert dead_letters.count() == 2

    replayed = run("dead-letters", "replay", task_entry["id"], env=env, cwd=tmp_path)
    assert replayed.code == 0, replayed.both
    assert [e["id"] for e in dead_letters.list()] == [raw_entry["id"]]
    messages = real_redis.lrange(queue, 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == SAVE_TASK
    assert message["content-type"] == "application/json"

    unconfirmed = run("dead-letters", "purge", env=env, cwd=tmp_path)
    assert unconfirmed.code != 0
    assert dead_letters.count() == 1
    purged = run("dead-letters", "purge", "--yes", env=env, cwd=tmp_path)
    assert purged.code == 0
    assert purged.out.strip() == "purged 1 dead letter(s)"
    assert dead_letters.count() == 0


# -- errors and secrets ---------------------------------------------------------------------------
def test_unreachable_store_is_a_clean_error_without_the_password(tmp_path: Path) -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:1/0"
    for args in (["--redis-url", url, "list"], ["-v", "--redis-url", url, "stats"]):
        result = run(*args, cwd=tmp_path)
        assert result.code == 1, result.both
        assert result.err.splitlines()[-1].startswith("error: StoreUnavailable")
        assert SECRET not in result.both


def test_wrong_password_and_bad_settings_are_clean_errors(
    real_redis_url: str, tmp_path: Path
) -> None:
    wrong = real_redis_url.replace("redis://", f"redis://nobody:{SECRET}@", 1)
    denied = run("--redis-url", wrong, "--namespace", "t-never", "list", cwd=tmp_path)
    assert denied.code == 1
    assert denied.err.startswith("error: AuthenticationError")
    assert SECRET not in denied.both

    bad = run("--redis-url", f"http://u:{SECRET}@host/0", "list", cwd=tmp_path)
    assert bad.code == 1
    assert bad.err.startswith("error: invalid settings: redis_url")
    assert SECRET not in bad.both

    demo = run(
        "demo",
        "-n",
        "1",
        "-m",
        "1",
        env={f"{PREFIX}REDIS_URL": f"redis://u:{SECRET}@127.0.0.1:1/0"},
        cwd=tmp_path,
    )
    assert demo.code == 1
    assert demo.out.startswith("Store: your Redis at redis://u:***@127.0.0.1:1/0")
    assert "error: StoreUnavailable" in demo.err
    assert SECRET not in demo.both


# -- the demo -------------------------------------------------------------------------------------
def assert_demo_passed(result: Result, agents: int, steps: int) -> None:
    assert result.code == 0, result.both
    assert re.search(r"│ lost\s+│ 0\s", result.out), result.out
    assert re.search(rf"│ handed off\s+│ {agents * steps}\s", result.out), result.out
    assert re.search(rf"│ persisted\s+│ {agents}\s", result.out), result.out
    assert f"Verified OK: {agents} threads" in result.out


def test_demo_against_the_configured_redis(
    real_redis_url: str, real_redis: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    env = {f"{PREFIX}REDIS_URL": real_redis_url, f"{PREFIX}NAMESPACE": namespace}
    result = run("demo", "--agents", "4", "--steps", "6", env=env, cwd=tmp_path)
    first = result.out.splitlines()[0]
    assert first.startswith(f"Store: your Redis at {real_redis_url}"), first
    match = re.search(rf"namespace ({re.escape(namespace)}\.demo-[0-9a-f]{{8}})$", first)
    assert match, first
    assert_demo_passed(result, 4, 6)
    # Its own sub-namespace and queue are gone afterwards.
    assert not list(real_redis.scan_iter(match=f"{match.group(1)}:*"))
    queue = f"agents_persistence.demo-{match.group(1)[-8:]}"
    assert not real_redis.exists(queue, f"_kombu.binding.{queue}")


@pytest.mark.parametrize("kind", ["redis-server", "fakeredis"])
def test_demo_with_an_embedded_redis(kind: str, tmp_path: Path) -> None:
    if kind == "redis-server" and find_redis_server() is None:
        skip_or_fail("no redis-server on PATH")
    if kind == "fakeredis" and not fakeredis_available():
        skip_or_fail("fakeredis[lua] is not installed")
    result = run(
        "demo", "-n", "3", "-m", "5", "--mode", "durable", "--embedded", kind, cwd=tmp_path
    )
    first = result.out.splitlines()[0]
    assert first.startswith(f"Store: embedded {kind} "), first
    assert "no AGENTS_PERSISTENCE_REDIS_URL set" in first
    assert_demo_passed(result, 3, 5)
