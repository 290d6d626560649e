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
