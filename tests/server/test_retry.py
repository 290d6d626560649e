"""The store's retry policy against a private redis-server that is killed, restarted,
paused, stripped of its scripts, or refuses our credentials."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import redis.exceptions as rex
from agents_persistence import RedisCheckpointer, RetryPolicy, StoreUnavailable

from tests.support import RedisServer, sample_state

pytestmark = pytest.mark.redis

Factory = Callable[..., RedisServer]
T = TypeVar("T")


@pytest.fixture
def open_store() -> Iterator[Callable[..., RedisCheckpointer]]:
    """Build checkpointers on a URL; all are closed after the test."""
    made: list[RedisCheckpointer] = []

    def build(url: str, **kwargs: Any) -> RedisCheckpointer:
        store = RedisCheckpointer.from_url(url, namespace="retry", **kwargs)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


@contextmanager
def restarted_after(server: RedisServer, delay: float) -> Iterator[None]:
    """Restart ``server`` (already down) from a background thread after ``delay`` seconds."""
    failure: list[BaseException] = []

    def restart() -> None:
        time.sleep(delay)
        try:
            server.restart()
        except BaseException as exc:  # reported below, on the test's thread
            failure.append(exc)

    thread = threading.Thread(target=restart, name="redis-restart")
    thread.start()
    try:
        yield
    finally:
        thread.join(30)
    assert not failure, failure


def retry_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agents_persistence.retry"]


def test_a_save_rides_out_a_crash_and_restart(
    redis_server: RedisServer,
    open_store: Callable[..., RedisCheckpointer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agents_persistence.retry")
    policy = RetryPolicy(attempts=100, initial_backoff=0.05, max_backoff=0.25, deadline=8.0)
    store = open_store(redis_server.url, retry=policy)
    store.save_state("t", sample_state("before"), version=1)

    redis_server.kill()
    start = time.monotonic()
    with restarted_after(redis_server, 0.5):
        result = store.save_state("t", sample_state("after"), version=2)
    elapsed = time.monotonic() - start

    assert result.written  # the server lost everything (no AOF): version 2 is new to it
    assert 0.4 < elapsed < policy.deadline
    assert store.load_state("t") == sample_state("after")
    assert store.list_threads() == ["t"]
    messages = retry_messages(caplog)
    assert any("save: transient store error" in m for m in messages)
    assert any(m.startswith("Retrying") for m in messages)  # tenacity's before_sleep hook


def test_aof_data_survives_a_crash(
    redis_server_factory: Factory, open_store: Callable[..., RedisCheckpointer]
) -> None:
    server = redis_server_factory(appendonly=True)
    policy = RetryPolicy(attempts=100, initial_backoff=0.05, max_backoff=0.25, deadline=8.0)
    store = open_store(server.url, retry=policy)
    store.save_state("t", sample_state("durable"), version=5)
    server.kill()
    with restarted_after(server, 0.3):
        checkpoint = store.load_checkpoint("t")
    assert checkpoint is not None
    assert checkpoint.version == 5
    assert store.save_state("t", sample_state("older"), version=4).stale


@pytest.mark.parametrize("operation", ["save", "load", "list", "delete", "cleanup", "count"])
def test_store_unavailable_within_the_bound(
    redis_server: RedisServer, open_store: Callable[..., RedisCheckpointer], operation: str
) -> None:
    policy = RetryPolicy(attempts=1000, initial_backoff=0.02, max_backoff=0.1, deadline=0.5)
    store = open_store(redis_server.url, retry=policy)
    store.save_state("t", sample_state())
    calls: dict[str, Callable[[], object]] = {
        "save": lambda: store.save_state("t", sample_state()),
        "load": lambda: store.load_state("t"),
        "list": store.list_threads,
        "delete": lambda: store.delete_thread("t"),
        "cleanup": store.cleanup_expired,
        "count": store.count_threads,
    }
    redis_server.kill()
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        calls[operation]()
    elapsed = time.monotonic() - start
    assert isinstance(info.value.__cause__, rex.ConnectionError)
    assert policy.deadline <= elapsed < policy.deadline + policy.max_backoff + 1.0
    assert "store unavailable" in str(info.value)


def test_a_paused_server_times_out_into_store_unavailable(
    redis_server: RedisServer, open_store: Callable[..., RedisCheckpointer]
) -> None:
    policy = RetryPolicy(attempts=1000, initial_backoff=0.02, max_backoff=0.1, deadline=0.6)
    store = open_store(redis_server.url, retry=policy, socket_timeout=0.2)
    store.save_state("t", sample_state())
    redis_server.pause()
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.load_state("t")
    elapsed = time.monotonic() - start
    redis_server.resume()
    assert isinstance(info.value.__cause__, rex.TimeoutError)
    assert elapsed < policy.deadline + policy.max_backoff + 2 * 0.2 + 1.0
    assert store.load_state("t") == sample_state()  # and it recovers once resumed


def test_script_flush_is_handled(
    redis_server: RedisServer, open_store: Callable[..., RedisCheckpointer]
) -> None:
    """After SCRIPT FLUSH (as after a restart or failover) every script call reloads."""
    admin = redis_server.client()
    store = open_store(redis_server.url)
    short = open_store(redis_server.url, ttl=0.1)
    store.save_state("warm", sample_state())
    list(store.iter_threads())

    def flushed(operation: Callable[[], T]) -> T:
        admin.script_flush()
        return operation()

    assert flushed(lambda: store.save_state("t", sample_state("a"))).written
    assert flushed(lambda: store.save_many([store.prepare("u", sample_state())]))
    assert sorted(flushed(store.list_threads)) == ["t", "u", "warm"]
    assert flushed(lambda: list(store.iter_threads(page_size=1))) == ["t", "u", "warm"]
    assert flushed(lambda: store.delete_thread("u")).written
    short.save_state("brief", sample_state())
    time.sleep(0.2)
    assert flushed(short.cleanup_expired) == 1
    assert store.load_state("t") == sample_state("a")
    keys = sorted(admin.scan_iter(match="retry:*"))
    # the failed transaction's staged copy is gone (a staging key per index shard)
    assert [k for k in keys if k.endswith(b":staging")] == []


def test_a_wrong_password_is_not_retried(
    redis_server_factory: Factory,
    open_store: Callable[..., RedisCheckpointer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agents_persistence.retry")
    server = redis_server_factory(requirepass="right-password")
    policy = RetryPolicy(attempts=50, initial_backoff=0.1, max_backoff=1.0, deadline=10.0)
    for url in (server.url_for(password="wrong-password"), server.url_for()):
        store = open_store(url, retry=policy)
        start = time.monotonic()
        with pytest.raises(rex.AuthenticationError) as info:
            store.save_state("t", sample_state())
        assert not isinstance(info.value, StoreUnavailable)
        with pytest.raises(rex.AuthenticationError):
            store.load_state("t")
        assert time.monotonic() - start < 1.0
    assert retry_messages(caplog) == []
    assert open_store(server.url, retry=policy).save_state("t", sample_state()).written


def test_an_acl_refusal_is_not_retried(
    redis_server_factory: Factory,
    open_store: Callable[..., RedisCheckpointer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agents_persistence.retry")
    server = redis_server_factory(
        extra_args=["--user", "no-reads", "on", ">pw", "~*", "&*", "+@all", "-get"]
    )
    policy = RetryPolicy(attempts=50, initial_backoff=0.1, max_backoff=1.0, deadline=10.0)
    assert open_store(server.url).save_state("t", sample_state()).written
    store = open_store(server.url_for("no-reads", "pw"), retry=policy)
    start = time.monotonic()
    with pytest.raises(rex.NoPermissionError):
        store.load_state("t")
    assert time.monotonic() - start < 1.0
    assert retry_messages(caplog) == []
