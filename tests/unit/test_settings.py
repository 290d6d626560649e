"""agents_persistence.config.Settings: environment, .env, keyword overrides, validation, and
secrets."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from agents_persistence import RedisCheckpointer
from agents_persistence.config import Settings, redact_url
from pydantic import ValidationError

pytestmark = pytest.mark.unit

PREFIX = "AGENTS_PERSISTENCE_"
SECRET = "hunter2-s3cret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AGENTS_PERSISTENCE_* variable and no .env file from the machine leaks in."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.broker_url is None
    assert settings.broker.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.namespace == "agents"
    assert settings.ttl_seconds is None
    assert settings.eager is False


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "REDIS_URL": "redis://example.com:6380/2",
        "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "NAMESPACE": "from-env",
        "TTL_SECONDS": "0.5",
        "QUEUE": "q1",
        "EAGER": "true",
        "CLEANUP_INTERVAL_SECONDS": "7",
        "MAX_SNAPSHOT_BYTES": "65536",
        "RETRY_ATTEMPTS": "9",
        "RETRY_DEADLINE_SECONDS": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(PREFIX + name, value)
    settings = Settings()
    assert settings.redis_url.get_secret_value() == "redis://example.com:6380/2"
    assert settings.broker.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.namespace == "from-env"
    assert settings.ttl_seconds == 0.5
    assert settings.queue == "q1"
    assert settings.eager is True
    assert settings.cleanup_interval_seconds == 7
    assert settings.max_snapshot_bytes == 65536
    assert settings.retry_attempts == 9
    assert settings.retry_deadline_seconds == 3


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMESPACE", "nope")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    settings = Settings()
    assert settings.namespace == "agents"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"


def test_keywords_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "NAMESPACE", "from-env")
    monkeypatch.setenv(PREFIX + "TTL_SECONDS", "10")
    settings = Settings(namespace="from-code", redis_url="redis://code:1/0")
    assert settings.namespace == "from-code"
    assert settings.redis_url.get_secret_value() == "redis://code:1/0"
    assert settings.ttl_seconds == 10


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"{PREFIX}NAMESPACE=from-dotenv\n{PREFIX}TTL_SECONDS=42\n{PREFIX}QUEUE=dotenv-q\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    assert Settings().namespace == "from-dotenv"
    monkeypatch.setenv(PREFIX + "NAMESPACE", "from-env")  # the environment beats .env
    settings = Settings(queue="from-code")
    assert (settings.namespace, settings.ttl_seconds, settings.queue) == (
        "from-env",
        42,
        "from-code",
    )


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.namespace = "changed"  # type: ignore[misc]


def test_from_settings_builds_the_store() -> None:
    settings = Settings(
        namespace="built",
        ttl_seconds=1.5,
        max_snapshot_bytes=2048,
        compress_threshold_bytes=None,
        retry_attempts=3,
        retry_initial_backoff_seconds=0.01,
        retry_max_backoff_seconds=0.5,
        retry_deadline_seconds=4,
    )
    store = RedisCheckpointer.from_settings(settings)  # connects lazily: nothing is sent
    try:
        assert store.namespace == "built"
        assert store.ttl == timedelta(seconds=1.5)
        assert store.codec.max_snapshot_bytes == 2048
        assert store.codec.compress_threshold is None
        assert (store.retry.attempts, store.retry.deadline) == (3, 4)
        assert (store.retry.initial_backoff, store.retry.max_backoff) == (0.01, 0.5)
    finally:
        store.close()


# -- secrets --------------------------------------------------------------------------------------
def test_passwords_never_reach_repr_or_str() -> None:
    settings = Settings(
        redis_url=f"redis://user:{SECRET}@store:6379/0",
        broker_url=f"amqp://guest:{SECRET}@broker:5672//",
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text
    assert "redis://user:***@store:6379/0" in repr(settings)
    assert settings.redis_url.get_secret_value() == f"redis://user:{SECRET}@store:6379/0"
    assert SECRET not in repr(settings.redis_url)


def test_redact_url() -> None:
    assert redact_url(f"redis://:{SECRET}@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url(None) == "-"


BAD_VALUES: list[Any] = [
    pytest.param({"redis_url": f"redis://:{SECRET}@host:notaport/0"}, id="malformed-port"),
    pytest.param({"redis_url": f"http://:{SECRET}@host:1/0"}, id="wrong-scheme"),
    pytest.param({"redis_url": f"amqp://u:{SECRET}@host:5672//"}, id="broker-scheme-for-store"),
    pytest.param({"redis_url": f"redis://:{SECRET}@/0"}, id="no-host"),
    pytest.param({"redis_url": "not a url"}, id="not-a-url"),
    pytest.param({"broker_url": f"ftp://u:{SECRET}@host/"}, id="broker-wrong-scheme"),
    pytest.param({"broker_url": f"amqp://u:{SECRET}@host:99999999//"}, id="broker-bad-port"),
    pytest.param({"ttl_seconds": -1}, id="negative-ttl"),
    pytest.param({"ttl_seconds": 0}, id="zero-ttl"),
    pytest.param({"namespace": "a:b"}, id="namespace-colon"),
    pytest.param({"namespace": ""}, id="namespace-empty"),
    pytest.param({"namespace": "has space"}, id="namespace-space"),
    pytest.param(
        {"retry_initial_backoff_seconds": 1.0, "retry_max_backoff_seconds": 0.5},
        id="retry-max-below-initial",
    ),
    pytest.param({"retry_attempts": 0}, id="retry-attempts-zero"),
    pytest.param({"retry_deadline_seconds": 0}, id="retry-deadline-zero"),
    pytest.param(
        {"task_soft_time_limit_seconds": 90, "task_time_limit_seconds": 60}, id="time-limits"
    ),
    pytest.param({"tombstone_ttl_seconds": 1}, id="tombstone-shorter-than-redelivery"),
    pytest.param({"max_snapshot_bytes": 10}, id="tiny-snapshot-cap"),
]


@pytest.mark.parametrize("values", BAD_VALUES)
def test_bad_values_raise_validation_error(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


@pytest.mark.parametrize("values", BAD_VALUES)
def test_validation_errors_carry_no_password(values: dict[str, Any]) -> None:
    values = {
        "redis_url": f"redis://:{SECRET}@store:6379/0",
        "broker_url": f"redis://:{SECRET}@broker:6379/1",
        **values,
    }
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_validation_error_from_environment_carries_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PREFIX + "REDIS_URL", f"redis://:{SECRET}@store:bad/0")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert SECRET not in str(info.value)


@pytest.mark.xfail(
    reason="known gap: ValidationError.errors()/.json() keep the raw input (the URL with its "
    "password); only str()/repr() hide it (hide_input_in_errors). Callers that log "
    "errors() must pass include_input=False.",
    strict=True,
)
def test_structured_validation_errors_carry_no_password() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=f"redis://:{SECRET}@store:notaport/0")
    assert SECRET not in info.value.json()
    assert SECRET not in str(info.value.errors())
