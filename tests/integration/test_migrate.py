"""Migration to the sharded layout while a real ``celery worker`` writes to the namespace,
for a namespace of the single-index layout of earlier releases and for one the Rust crate
wrote (plain JSON at ``<ns>:thread:<id>``, ids in ``<ns>:threads``); and
``agents-persistence migrate`` killed by PID mid-way, then run again.

Each test runs its own private redis-server (store and broker) and worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
import redis
from agents_persistence import MigrationReport, RedisCheckpointer, migrate_namespace
from agents_persistence.keys import SINGLE, Keys
from agents_persistence.tasks.client.checkpointer import HandOff

from tests.integration.conftest import Stack, StackFactory
from tests.support import SEED_JSON, free_port, sample_state, skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.redis]

THREADS = 400
TTL_SECONDS = 3600


def _plant(stack: Stack, writer: Literal["single", "crate"]) -> dict[str, int]:
    """``THREADS`` threads in the single-index layout, half with a TTL; their versions."""
    ns = stack.settings.namespace
    raw = stack.server.client()
    expected: dict[str, int] = {}
    if writer == "single":
        old = RedisCheckpointer(stack.server.client(), namespace=ns, index_shards=SINGLE)
        expiring = RedisCheckpointer(
            stack.server.client(), namespace=ns, index_shards=SINGLE, ttl=TTL_SECONDS
        )
        for i in range(THREADS):
            tid = f"agent-{i}"
            store = expiring if i % 2 else old
            store.save_state(tid, sample_state(f"{tid}@{i + 1}"), version=i + 1)
            expected[tid] = i + 1
        assert raw.get(f"{ns}:layout") == b"single"
    else:  # what the crate's save_state sends: SET (SETEX with a TTL), then SADD
        with raw.pipeline(transaction=False) as pipe:
            for i in range(THREADS):
                tid = f"agent-{i}"
                pipe.set(f"{ns}:thread:{tid}", SEED_JSON, ex=TTL_SECONDS if i % 2 else None)
                pipe.sadd(f"{ns}:threads", tid)
                expected[tid] = 0
            pipe.execute()
        assert raw.get(f"{ns}:layout") is None
    return expected


@pytest.mark.parametrize("writer", ["single", "crate"])
def test_a_namespace_migrates_while_a_worker_writes_to_it(
    stack_factory: StackFactory, writer: Literal["single", "crate"]
) -> None:
    stack = stack_factory(handoff_mode="durable")
    ns = stack.settings.namespace
    expected = _plant(stack, writer)
    stack.worker(concurrency=2)
    client = stack.client()
    ids = list(expected)
    version = 10_000
    pending: list[HandOff] = []

    def hand_off(count: int) -> list[HandOff]:
        nonlocal version
        handles = []
        for _ in range(count):
            version += 1
            tid = ids[version % len(ids)]
            handles.append(
                client.save_state(tid, sample_state(f"{tid}@{version}"), version=version)
            )
            expected[tid] = version
        return handles

    # The worker writes before the migration (its store takes the single layout)...
    for handle in hand_off(20):
        handle.wait(timeout=30)
    raw = stack.server.client()
    assert raw.get(f"{ns}:layout") == b"single"
    written_during = 0
    deleted: set[str] = set()

    def between_batches(report: MigrationReport) -> None:
        # ...and during it: each batch runs while the hand-offs of the one before are in
        # the worker's hands; those must be stored before the next batch is sent.
        nonlocal pending, written_during
        assert raw.get(f"{ns}:layout") == b"migrating:16"
        for handle in pending:
            handle.wait(timeout=30)
        written_during += len(pending)
        pending = hand_off(8)
        if report.batches % 5 == 0:  # a delete through the store, in either layout
            tid = ids[(report.batches * 7) % len(ids)]
            client.delete_thread(tid)
            deleted.add(tid)

    started = time.monotonic()
    report = migrate_namespace(raw, ns, batch=20, on_batch=between_batches)
    elapsed = time.monotonic() - started
    for handle in pending:
        handle.wait(timeout=30)
    assert report.finished
    assert written_during >= 8 * 10
    # Every thread moved exactly once, or was moved by a write (the writes move first).
    assert report.moved + report.already_newer <= THREADS
    if writer == "crate":  # all plain JSON but the 20 the worker rewrote beforehand
        assert report.moved - 20 <= report.crate <= report.moved
    else:
        assert report.crate == 0
    print(
        f"\nmigrated {writer} namespace of {THREADS} threads in {elapsed:.2f} s while the "
        f"worker stored {written_during} hand-offs: {report.as_dict()}"
    )

    # More writes afterwards, by the same worker (its store now in the sharded layout).
    for handle in hand_off(40):
        handle.wait(timeout=30)
    for tid in list(deleted):
        if expected[tid] > _tombstone_version(stack, tid):
            deleted.discard(tid)  # saved again after its delete
    client.flush(timeout=60)
    stack.wait_idle()

    _reconcile(stack, expected, deleted)


def _reconcile(stack: Stack, expected: dict[str, int], deleted: set[str]) -> None:
    """Every thread at its newest version, the listing exact, nothing left behind."""
    ns, raw = stack.settings.namespace, stack.server.client()
    assert raw.get(f"{ns}:layout") == b"sharded:16"
    old_keys = [k for k in raw.scan_iter(match=f"{ns}:*") if not k.startswith(f"{ns}:{{".encode())]
    assert sorted(old_keys) == [f"{ns}:layout".encode()]
    store = RedisCheckpointer.from_url(stack.server.url, namespace=ns)
    try:
        wrong = {}
        for tid, want in expected.items():
            checkpoint = store.load_checkpoint(tid)
            got = None if checkpoint is None else checkpoint.version
            if got != (None if tid in deleted else want):
                wrong[tid] = (got, want)
        assert not wrong, f"{len(wrong)} thread(s) not at their newest version: {wrong}"
        assert sorted(store.iter_threads(page_size=50)) == sorted(set(expected) - deleted)
        # The planted TTLs survived the move (records saved since carry the store's TTL: none).
        keys = Keys(ns)
        for i in range(1, THREADS, 2):
            tid = f"agent-{i}"
            if expected[tid] < 10_000 and tid not in deleted:
                assert 0 < raw.pttl(keys.thread(tid)) <= TTL_SECONDS * 1000
    finally:
        store.close()


def _tombstone_version(stack: Stack, tid: str) -> int:
    return stack.store.stored_versions([tid])[tid]


# -- the command ------------------------------------------------------------------------------
def _script() -> str:
    found = shutil.which("agents-persistence", path=str(Path(sys.executable).parent))
    if found is None:
        skip_or_fail("the agents-persistence console script is not installed (pip install -e .)")
    return found


def _env(url: str, ns: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_PERSISTENCE_")}
    return {**base, "AGENTS_PERSISTENCE_REDIS_URL": url, "AGENTS_PERSISTENCE_NAMESPACE": ns}


def test_the_command_killed_mid_way_resumes(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = stack_factory()
    ns = stack.settings.namespace
    raw = stack.server.client()
    threads = 20_000
    with raw.pipeline(transaction=False) as pipe:  # the Rust crate's keys
        for i in range(threads):
            pipe.set(f"{ns}:thread:c-{i}", SEED_JSON)
            pipe.sadd(f"{ns}:threads", f"c-{i}")
        pipe.execute()
    env = _env(stack.server.url, ns)

    dry = subprocess.run(
        [_script(), "migrate", "--dry-run"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    assert f"records to move │ {threads}" in " ".join(dry.stdout.split()).replace("┃", "│")
    assert raw.get(f"{ns}:layout") is None

    proc = subprocess.Popen(
        [_script(), "migrate", "--batch", "5"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_progress(raw, ns, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert raw.get(f"{ns}:layout") == b"migrating:16"
    recorded = int(raw.hget(f"{ns}:migration", "moved") or 0)
    assert 0 < recorded < threads

    done = subprocess.run(
        [_script(), "migrate", "--batch", "500"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "an interrupted migration, resumed" in text
    assert "sharded:16" in text
    assert raw.get(f"{ns}:layout") == b"sharded:16"
    store = RedisCheckpointer.from_url(stack.server.url, namespace=ns)
    try:
        assert len(set(store.iter_threads(page_size=1000))) == threads
        assert store.load_checkpoint(f"c-{threads - 1}") is not None
    finally:
        store.close()

    again = subprocess.run(
        [_script(), "migrate"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "already in the sharded layout" in " ".join(again.stdout.split())


def _wait_for_progress(raw: redis.Redis, ns: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the running command has recorded some moves (and has not finished)."""
    deadline = time.monotonic() + 60
    while int(raw.hget(f"{ns}:migration", "moved") or 0) < 100:
        assert proc.poll() is None, "the migration ended before it could be interrupted"
        assert time.monotonic() < deadline, "the migration recorded no progress"
        time.sleep(0.005)


def test_the_command_on_an_unreachable_server_says_how_to_resume(tmp_path: Path) -> None:
    url = f"redis://:{'pw-secret'}@127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [_script(), "migrate"],
        env=_env(url, "nobody"), cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "migration interrupted" in done.stderr
    assert "again to resume" in done.stderr
    assert "pw-secret" not in done.stdout + done.stderr
