"""Every ```python block of README.md, run on its own against the machine's Redis.

Each block runs in a fresh interpreter (so it can only use what it defines), from an empty
directory, with ``AGENTS_PERSISTENCE_REDIS_URL``, ``_NAMESPACE`` and ``_QUEUE`` naming the
machine's Redis and a namespace and queue of this test's; a literal ``namespace="..."`` in a
block is pointed at that namespace too, so nothing outside it is written. A block that uses
``CeleryCheckpointer`` gets a real ``celery -A agents_persistence.tasks worker`` with the same
environment, as the README tells the reader to start one. A block that defines ``test_``
functions runs under pytest, on the installed package's fixtures. The namespace's keys and the
queue are deleted afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY

from tests.support.celery_worker import CeleryWorker, clean_environ, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.redis]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.fixture
def block_env(
    real_redis_url: str, real_redis: redis.Redis, namespace: str
) -> Iterator[dict[str, str]]:
    """The environment of a block and its worker: the machine's Redis, this test's namespace
    and a queue of its own (deleted afterwards, as the namespace's keys are)."""
    queue = f"q-{namespace}"
    yield clean_environ(settings_env(redis_url=real_redis_url, namespace=namespace, queue=queue))
    real_redis.delete(queue, f"_kombu.binding.{queue}")
    # The worker's in-flight list of that queue (empty once it stopped) and its registration.
    registry = INFLIGHT_REGISTRY
    for key, value in real_redis.hscan_iter(registry):
        if value == queue.encode():
            real_redis.hdel(registry, key)
            real_redis.delete(key, key + b":alive")


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block-{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(
    block: str,
    block_env: dict[str, str],
    celery_worker_factory: Callable[..., CeleryWorker],
    tmp_path: Path,
) -> None:
    env = block_env
    namespace = env["AGENTS_PERSISTENCE_NAMESPACE"]
    code = re.sub(r'namespace="[^"]*"', f'namespace="{namespace}"', block)
    if "CeleryCheckpointer" in code:
        celery_worker_factory(env, concurrency=1)
    if re.search(r"^def test_", code, re.M):
        (tmp_path / "test_readme_block.py").write_text(code)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp_path]
    else:
        argv = [sys.executable, "-c", code]
    proc = subprocess.run(
        [str(arg) for arg in argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
