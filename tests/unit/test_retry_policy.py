"""RetryPolicy without a server: what is retried, how often, and what is raised."""

from __future__ import annotations

import logging
import time

import pytest
import redis.exceptions as rex
from agents_persistence import RetryPolicy, StoreUnavailable
from agents_persistence.retry import is_transient

pytestmark = pytest.mark.unit

FAST = RetryPolicy(attempts=5, initial_backoff=0.001, max_backoff=0.002, deadline=5.0)


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then returns ``"ok"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.mark.parametrize(
    "error",
    [
        rex.ConnectionError("refused"),
        rex.TimeoutError("timed out"),
        rex.BusyLoadingError("loading"),
        rex.ReadOnlyError("readonly"),
        rex.TryAgainError("try again"),
        rex.ClusterDownError("CLUSTERDOWN"),
        rex.ClusterError("TTL exhausted."),
    ],
)
def test_transient_errors_are_retried(error: Exception) -> None:
    assert is_transient(error)
    flaky = Flaky(3, error)
    assert FAST.call("op", flaky) == "ok"
    assert flaky.calls == 4


@pytest.mark.parametrize(
    "error",
    [
        rex.AuthenticationError("WRONGPASS"),
        rex.AuthorizationError("denied"),
        rex.ResponseError("WRONGTYPE"),
        rex.NoScriptError("NOSCRIPT"),
        ValueError("a bug"),
    ],
)
def test_permanent_errors_are_raised_at_once(error: Exception) -> None:
    assert not is_transient(error)
    flaky = Flaky(1, error)
    with pytest.raises(type(error)) as info:
        FAST.call("op", flaky)
    assert info.value is error
    assert flaky.calls == 1


def test_gives_up_after_the_attempts_with_store_unavailable() -> None:
    error = rex.ConnectionError("refused")
    flaky = Flaky(100, error)
    with pytest.raises(StoreUnavailable, match="op: store unavailable") as info:
        FAST.call("op", flaky)
    assert info.value.__cause__ is error
    assert flaky.calls == 1 + FAST.attempts


def test_zero_attempts_means_one_call() -> None:
    flaky = Flaky(1, rex.ConnectionError("refused"))
    with pytest.raises(StoreUnavailable):
        RetryPolicy(attempts=0).call("op", flaky)
    assert flaky.calls == 1


def test_the_deadline_bounds_the_time() -> None:
    policy = RetryPolicy(attempts=1000, initial_backoff=0.01, max_backoff=0.05, deadline=0.3)
    flaky = Flaky(10**6, rex.ConnectionError("refused"))
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        policy.call("op", flaky)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.3 + policy.max_backoff + 0.3
    assert flaky.calls > 3


def test_retries_are_logged_before_sleeping(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agents_persistence.retry")
    assert FAST.call("save", Flaky(3, rex.ConnectionError("refused"))) == "ok"
    messages = [r.getMessage() for r in caplog.records if r.name == "agents_persistence.retry"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert any("save: transient store error" in m for m in messages)
    assert any(m.startswith("Retrying") for m in messages)  # tenacity's before_sleep


def test_the_happy_path_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agents_persistence.retry")
    assert FAST.call("save", lambda: "ok") == "ok"
    assert caplog.records == []


def test_arguments_are_passed_through() -> None:
    def add(a: int, *, b: int) -> int:
        return a + b

    assert FAST.call("op", add, 1, b=2) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": -1},
        {"initial_backoff": 0},
        {"deadline": 0},
        {"initial_backoff": 1.0, "max_backoff": 0.5},
    ],
)
def test_impossible_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"retry bounds|max_backoff"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_worst_case_is_capped_by_the_deadline() -> None:
    assert RetryPolicy(attempts=50, deadline=3.0).worst_case_seconds == 3.0
    assert RetryPolicy(attempts=1).worst_case_seconds == 0.0
