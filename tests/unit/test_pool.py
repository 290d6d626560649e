"""The worker's prefork pool survives a consumer restart after a pool child died, and the
app selects it; the broker's restore-sweep lock is short-lived."""

from __future__ import annotations

import os
import re
import signal
import time
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from agents_persistence.config import Settings
from agents_persistence.tasks.worker import pool as our_pool
from agents_persistence.tasks.worker.app import celery_config
from agents_persistence.tasks.worker.pool import (
    CELERY_INTERNALS,
    check_celery_internals,
    missing_celery_internals,
)
from celery.bin.worker import WorkersPool
from celery.concurrency import asynpool, get_implementation, prefork, solo, thread
from kombu.asynchronous import Hub
from kombu.transport import redis as kombu_redis

pytestmark = pytest.mark.unit

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
REDIS = "redis://127.0.0.1:6379/1"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def _pool(cls: type[Any]) -> Iterator[tuple[Any, Hub]]:
    hub = Hub()
    pool = cls(processes=1, threads=False)
    try:
        pool.register_with_event_loop(hub)
        yield pool, hub
    finally:
        pool.terminate()
        hub.close()


@pytest.fixture
def stock() -> Iterator[tuple[Any, Hub]]:
    yield from _pool(asynpool.AsynPool)


@pytest.fixture
def ours() -> Iterator[tuple[Any, Hub]]:
    yield from _pool(our_pool.AsynPool)


def _exit_handled_but_listed(pool: Any, hub: Hub) -> Any:
    """The state the pool is in when a child's exit was handled but the child not yet
    joined (the broker connection lost before the pool's maintenance ran)."""
    proc = pool._pool[0]
    pool._untrack_child_process(proc, hub)
    assert proc._sentinel_poll is None
    assert proc in pool._pool
    return proc


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_stock_pool_dies_registering_a_child_whose_exit_was_handled(
    stock: tuple[Any, Hub],
) -> None:
    pool, hub = stock
    _exit_handled_but_listed(pool, hub)
    with pytest.raises(ValueError, match="file descriptor is None"):
        pool.register_with_event_loop(hub)  # what the consumer does after a reconnect


def test_our_pool_registers_again_and_skips_only_that_child(ours: tuple[Any, Hub]) -> None:
    pool, hub = ours
    proc = _exit_handled_but_listed(pool, hub)
    pool.register_with_event_loop(hub)
    assert proc._sentinel_poll is None
    assert None not in hub.readers
    # A live child registered again is still watched.
    live = pool._pool[0]
    live._sentinel_poll = os.dup(live._popen.sentinel)
    pool.register_with_event_loop(hub)
    assert live._sentinel_poll in hub.readers


def test_our_pool_replaces_a_killed_child_and_registers_again(ours: tuple[Any, Hub]) -> None:
    pool, hub = ours
    dead = pool._pool[0]
    os.kill(dead.pid, signal.SIGKILL)
    _wait_for(lambda: dead.exitcode is not None)
    pool._event_process_exit(hub, dead)  # the sentinel fired: untrack, maintain the pool
    pool.register_with_event_loop(hub)
    assert dead not in pool._pool
    assert len(pool._pool) == 1
    fresh = pool._pool[0]
    assert fresh.pid != dead.pid
    assert isinstance(fresh._sentinel_poll, int)
    assert fresh._sentinel_poll in hub.readers


@pytest.mark.parametrize("broker", [REDIS, AMQP])
def test_the_app_selects_our_pool_for_a_plain_worker_and_prefork(broker: str) -> None:
    conf = celery_config(Settings(_env_file=None, broker_url=broker))
    assert get_implementation(conf["worker_pool"]) is our_pool.TaskPool
    assert our_pool.TaskPool.Pool is our_pool.AsynPool
    assert issubclass(our_pool.TaskPool, prefork.TaskPool)
    # celery worker -P ...: "prefork" (also the default) means the configured pool.
    app = SimpleNamespace(conf=SimpleNamespace(**conf))
    ctx = click.Context(click.Command("worker"), obj=SimpleNamespace(app=app))
    option = WorkersPool()
    assert option.convert("prefork", None, ctx) is our_pool.TaskPool
    assert option.convert("solo", None, ctx) is solo.TaskPool
    assert option.convert("threads", None, ctx) is thread.TaskPool


@pytest.mark.parametrize(
    ("visibility_timeout", "interval", "expire"), [(None, 10.0, 20), (30, 7.5, 15), (8, 2.0, 5)]
)
def test_the_restore_sweep_lock_outlives_a_sweep_not_a_broker_crash(
    visibility_timeout: float | None, interval: float, expire: int
) -> None:
    settings = Settings(
        _env_file=None, broker_url=REDIS, visibility_timeout_seconds=visibility_timeout
    )
    transport = celery_config(settings)["broker_transport_options"]
    assert transport["unacked_restore_interval"] == interval
    assert transport["unacked_mutex_expire"] == expire
    assert "unacked_mutex_expire" in kombu_redis.Channel.from_transport_options


def test_no_sweep_lock_option_for_amqp() -> None:
    transport = celery_config(Settings(_env_file=None, broker_url=AMQP))[
        "broker_transport_options"
    ]
    assert "unacked_mutex_expire" not in transport


def test_the_installed_celery_has_every_internal_the_pool_uses() -> None:
    assert missing_celery_internals() == []
    check_celery_internals()


def test_every_method_the_pool_overrides_is_checked() -> None:
    for ours, theirs in (
        (our_pool.AsynPool, asynpool.AsynPool),
        (our_pool.TaskPool, prefork.TaskPool),
    ):
        overridden = {
            name for name in vars(ours) if not name.startswith("__") and hasattr(theirs, name)
        }
        assert overridden <= set(CELERY_INTERNALS[theirs])


def test_a_missing_internal_fails_the_import_with_the_names() -> None:
    class Shrunk:
        def _track_child_process(self) -> None: ...

    required: dict[type, tuple[str, ...]] = {Shrunk: ("_track_child_process", "_gone")}
    assert [m.rsplit(".", 2)[-2:] for m in missing_celery_internals(required)] == [
        ["Shrunk", "_gone"]
    ]
    with pytest.raises(ImportError, match=r"Celery 5\.7.*lacks: .*Shrunk\._gone"):
        check_celery_internals(required)


def test_celery_is_pinned_to_the_installed_minor_version() -> None:
    dependencies = tomllib.loads(_PYPROJECT.read_text("utf-8"))["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"celery\b", d)]
    major, minor = (int(p) for p in metadata.version("celery").split(".")[:2])
    assert pins == [f"celery[redis]>={major}.{minor},<{major}.{minor + 1}"]
