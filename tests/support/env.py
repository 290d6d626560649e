"""What the test run may assume about its machine: skip locally, fail on CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
import redis

__all__ = ["REAL_REDIS_URL_ENV", "in_ci", "real_redis_url", "redis_answers", "skip_or_fail"]

#: Overrides the shared server's URL (default ``redis://127.0.0.1:6379/0``).
REAL_REDIS_URL_ENV = "AGENTS_PERSISTENCE_TEST_REDIS_URL"


def in_ci() -> bool:
    """True under ``CI=true`` (or ``1``/``yes``): a missing service is then a failure."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason`` locally; fail it with the same reason on CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


def real_redis_url() -> str:
    """URL of the machine's shared Redis."""
    return os.environ.get(REAL_REDIS_URL_ENV, "redis://127.0.0.1:6379/0")


def redis_answers(url: str, timeout: float = 1.0) -> str | None:
    """None if a server at ``url`` answers PING, else why not."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None
