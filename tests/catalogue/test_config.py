"""Catalogue: configuration that cannot work is refused when it is read, with a typed error.

Through keyword arguments and through the environment alike, ``Settings`` raises
pydantic's ``ValidationError`` (a ``ValueError``) naming the field, never echoing the value
(a URL may hold a password). The core's own constructors refuse the same with ValueError.

What merely looks odd is not refused: a compression threshold above the size cap means
"never compress", and a field left unset follows one that was set
(``tests/unit/test_settings.py`` walks every field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents_persistence import RedisCheckpointer, RetryPolicy
from agents_persistence.config import Settings
from pydantic import ValidationError

pytestmark = pytest.mark.unit

SECRET = "cfg-Secr3t"
PREFIX = "AGENTS_PERSISTENCE_"

#: Settings that cannot work: field values -> a word the error must contain.
BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "url-no-scheme": ({"redis_url": f"{SECRET}@127.0.0.1:6379"}, "redis_url"),
    "url-unknown-scheme": ({"redis_url": f"http://:{SECRET}@127.0.0.1:6379"}, "redis_url"),
    "url-bad-port": ({"redis_url": f"redis://:{SECRET}@127.0.0.1:99999/0"}, "redis_url"),
    "url-port-not-a-number": ({"redis_url": f"redis://:{SECRET}@127.0.0.1:six/0"}, "redis_url"),
    "url-no-host": ({"redis_url": f"redis://:{SECRET}@/0"}, "redis_url"),
    "url-unparseable": ({"redis_url": f"redis://:{SECRET}@[::1/0"}, "redis_url"),
    "broker-unknown-scheme": ({"broker_url": f"sqs://:{SECRET}@host"}, "broker_url"),
    "ttl-negative": ({"ttl_seconds": -1}, "ttl_seconds"),
    "ttl-zero": ({"ttl_seconds": 0}, "ttl_seconds"),
    "tombstone-ttl-negative": ({"tombstone_ttl_seconds": -5}, "tombstone_ttl_seconds"),
    "tombstone-shorter-than-redelivery": (
        {"tombstone_ttl_seconds": 60, "visibility_timeout_seconds": 120},
        "tombstone_ttl_seconds",
    ),
    "retry-max-below-initial": (
        {"retry_initial_backoff_seconds": 2, "retry_max_backoff_seconds": 1},
        "retry_max_backoff_seconds",
    ),
    "retry-attempts-zero": ({"retry_attempts": 0}, "retry_attempts"),
    "retry-deadline-negative": ({"retry_deadline_seconds": -1}, "retry_deadline_seconds"),
    "soft-limit-not-below-hard": (
        {"task_soft_time_limit_seconds": 90, "task_time_limit_seconds": 90},
        "task_soft_time_limit_seconds",
    ),
    "soft-limit-below-store-retries": (
        {"task_soft_time_limit_seconds": 10, "retry_deadline_seconds": 15},
        "task_soft_time_limit_seconds",
    ),
    "task-retries-negative": ({"task_max_retries": -1}, "task_max_retries"),
    "publish-timeout-zero": ({"publish_timeout_seconds": 0}, "publish_timeout_seconds"),
    "snapshot-cap-tiny": ({"max_snapshot_bytes": 10}, "max_snapshot_bytes"),
    "queue-empty": ({"queue": ""}, "queue"),
    "namespace-with-colon": ({"namespace": "a:b"}, "namespace"),
    "namespace-empty": ({"namespace": ""}, "namespace"),
    "namespace-glob": ({"namespace": "a*"}, "namespace"),
    "handoff-mode-unknown": ({"handoff_mode": "eventually"}, "handoff_mode"),
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AGENTS_PERSISTENCE_* variable or .env file of the machine leaks in."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("values", "field"), list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_settings_refused(values: dict[str, Any], field: str) -> None:
    """Keyword arguments: ValidationError naming the field, without the secret."""
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    assert field in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.parametrize(("values", "field"), list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_settings_refused_from_environment(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], field: str
) -> None:
    """The same values as AGENTS_PERSISTENCE_* variables: the same error."""
    for name, value in values.items():
        monkeypatch.setenv(PREFIX + name.upper(), str(value))
    with pytest.raises(ValidationError) as info:
        Settings()
    assert field in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": -1},
        {"ttl": 0},
        {"ttl": float("nan")},
        {"tombstone_ttl": None},
        {"namespace": "a:b"},
    ],
    ids=["ttl-negative", "ttl-zero", "ttl-nan", "no-tombstone-ttl", "namespace-with-colon"],
)
def test_store_constructor_refuses(kwargs: dict[str, Any]) -> None:
    """RedisCheckpointer.from_url with impossible values: ValueError before connecting."""
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by field
        RedisCheckpointer.from_url("redis://127.0.0.1:1/0", **kwargs)


def test_store_constructor_refuses_malformed_url() -> None:
    """A URL redis-py cannot parse: ValueError, without the secret."""
    with pytest.raises(ValueError) as info:  # noqa: PT011
        RedisCheckpointer.from_url(f"htp://:{SECRET}@127.0.0.1:6379/0")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": -1},
        {"initial_backoff": 0},
        {"deadline": 0},
        {"initial_backoff": 2.0, "max_backoff": 1.0},
    ],
    ids=["attempts-negative", "backoff-zero", "deadline-zero", "max-below-initial"],
)
def test_retry_policy_refuses(kwargs: dict[str, Any]) -> None:
    """RetryPolicy with impossible bounds: ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011
        RetryPolicy(**kwargs)
