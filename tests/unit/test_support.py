"""The shared test support that other suites build on (no server needed)."""

from __future__ import annotations

import pytest
from agents_persistence.keys import Keys

from tests.support import (
    RoundTripCounter,
    find_redis_server,
    in_ci,
    redis_answers,
    skip_or_fail,
    unique_namespace,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("", False)])
def test_in_ci(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_skip_locally_fail_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        skip_or_fail("no server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        skip_or_fail("no server")


def test_redis_server_binary_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    assert find_redis_server() is None


def test_redis_answers_explains_a_refusal() -> None:
    problem = redis_answers("redis://127.0.0.1:1/0", timeout=0.5)
    assert problem is not None
    assert "ConnectionError" in problem


def test_unique_namespaces_are_valid_and_distinct() -> None:
    names = {unique_namespace() for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.startswith("t-")
        Keys(name)  # raises if the namespace is not usable


def test_round_trip_counter() -> None:
    counter = RoundTripCounter()
    counter.record(("PING",))
    with counter.measure() as trips:
        counter.record(("MULTI", "EXEC"))
    assert trips == [("MULTI", "EXEC")]
    assert counter.round_trips == 2
    counter.reset()
    assert (counter.round_trips, counter.log) == (0, [])


def test_tests_use_the_one_harness() -> None:
    from agents_persistence.tasks.devtools import celery_process, redis_server

    from tests.support import RedisServer, RedisServerError, celery_worker, find_redis_server

    assert RedisServer is redis_server.RedisServer
    assert RedisServerError is redis_server.RedisServerError
    assert find_redis_server is redis_server.find_redis_server
    assert issubclass(celery_worker.CeleryWorker, celery_process.CeleryWorker)
    assert issubclass(celery_worker.CeleryBeat, celery_process.CeleryBeat)
    assert celery_worker.CeleryProcessError is celery_process.CeleryProcessError
    assert celery_worker.CeleryWorker.default_cwd == celery_worker.REPO_ROOT


def test_settings_env_and_clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    from tests.support.celery_worker import clean_environ, settings_env

    env = settings_env(
        redis_url=SecretStr("redis://:pw@h/0"), eager=True, ttl_seconds=None, queue="q"
    )
    assert env == {
        "AGENTS_PERSISTENCE_REDIS_URL": "redis://:pw@h/0",
        "AGENTS_PERSISTENCE_EAGER": "true",
        "AGENTS_PERSISTENCE_QUEUE": "q",
    }
    monkeypatch.setenv("AGENTS_PERSISTENCE_NAMESPACE", "from-the-shell")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://elsewhere")
    child = clean_environ(env)
    assert "AGENTS_PERSISTENCE_NAMESPACE" not in child
    assert "CELERY_BROKER_URL" not in child
    assert child["AGENTS_PERSISTENCE_QUEUE"] == "q"
    assert child["PYTHONUNBUFFERED"] == "1"
