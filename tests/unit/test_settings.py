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
from pydantic import SecretStr, ValidationError

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
    # several hosts (a cluster's seeds, the sentinels) stay as written, the password goes
    seeds = "10.0.0.1:7000,10.0.0.2:7001"
    assert redact_url(f"redis+cluster://:{SECRET}@{seeds}") == f"redis+cluster://:***@{seeds}"
    assert (
        redact_url(f"redis+sentinel://agent:{SECRET}@{seeds}/svc/2?sentinel_password={SECRET}")
        == f"redis+sentinel://agent:***@{seeds}/svc/2?sentinel_password=***"
    )


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


@pytest.mark.parametrize("values", BAD_VALUES)
def test_structured_validation_errors_carry_no_password(values: dict[str, Any]) -> None:
    """errors() and json() too: every input is redacted before the error leaves Settings
    (a model-level error's input holds every field, the URLs included)."""
    values = {
        "redis_url": f"redis://:{SECRET}@store:6379/0",
        "broker_url": f"redis://:{SECRET}@broker:6379/1",
        **values,
    }
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    assert SECRET not in info.value.json()
    assert SECRET not in str(info.value.errors())
    assert SECRET not in str(info.value.errors(include_context=True))


def test_structured_error_of_a_malformed_url_carries_no_password() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=f"redis://:{SECRET}@store:notaport/0")
    assert SECRET not in info.value.json()
    assert SECRET not in str(info.value.errors())
    (error,) = info.value.errors()
    assert error["loc"] == ("redis_url",)
    assert error["type"] == "value_error"
    assert "redis_url is not a valid URL" in error["msg"]


def test_a_model_level_error_keeps_the_other_inputs_and_drops_unknown_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text(f"UNRELATED_PASSWORD={SECRET}\n", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=f"redis://u:{SECRET}@store:6379/0", tombstone_ttl_seconds=1)
    (error,) = info.value.errors()
    assert error["input"] == {
        "redis_url": "redis://u:***@store:6379/0",
        "tombstone_ttl_seconds": 1,
    }
    assert SECRET not in info.value.json()


def test_assigning_to_the_frozen_settings_carries_no_password() -> None:
    settings = Settings()
    with pytest.raises(ValidationError) as info:
        settings.redis_url = f"redis://:{SECRET}@elsewhere:6379/0"  # type: ignore[misc,assignment]
    assert SECRET not in info.value.json()
    assert SECRET not in str(info.value.errors())


# -- one change never punishes: every field, a few valid non-default values -----------------------
#: Values the field's own constraints cannot give: strings, URLs, and lower bounds that depend
#: on other fields (their defaults: the tombstone outlives redelivery, the time limits exceed
#: one store call with its retries).
_SPECIAL: dict[str, list[Any]] = {
    "redis_url": ["rediss://store.example:6380/2", "unix:///run/redis.sock", "redis://h/0"],
    "broker_url": [
        "amqp://guest:guest@127.0.0.1:5672//",
        "memory://",
        "redis://h:1/1",
        "redis+sentinel://s1:26379,s2:26379/mymaster/1",
    ],
    # a sentinel:// broker needs it; any other broker ignores it
    "broker_master_name": ["mymaster"],
    "namespace": ["a", "n" * 64, "Team_1.prod-eu"],
    "queue": ["q", "q" * 200, "agents.high"],
    # quorum is RabbitMQ's: with the default broker (the store's Redis) it is refused, the
    # one value that needs another field set (tests/unit/test_queue_type.py walks it there).
    "queue_type": ["classic"],
}


def _lowest(name: str) -> float | None:
    """The smallest valid value of a field whose floor depends on the other defaults."""
    defaults = Settings.model_construct()  # the declared defaults, whatever the environment
    return {
        "tombstone_ttl_seconds": defaults.redelivery_window_seconds,
        "task_soft_time_limit_seconds": defaults.store_retry_span_seconds + 0.001,
        "task_time_limit_seconds": defaults.store_retry_span_seconds + 0.001,
    }.get(name)


def _bounds(metadata: list[Any]) -> tuple[float | None, bool, float | None]:
    """A field's lower bound, whether it is strict (gt), and its upper bound."""
    low, strict, high = None, False, None
    for item in metadata:
        if getattr(item, "ge", None) is not None:
            low = item.ge
        if getattr(item, "gt", None) is not None:
            low, strict = item.gt, True
        if getattr(item, "le", None) is not None:
            high = item.le
    return low, strict, high


def walk_values(name: str) -> list[Any]:
    """A few valid values of one field other than its default: its minimum, its maximum
    (or a large one), a typical one; None or a value for optional fields; the other choices."""
    field = Settings.model_fields[name]
    default = field.default
    if name in _SPECIAL:
        return _SPECIAL[name]
    annotation = str(field.annotation)
    if "Literal" in annotation:
        return [c for c in field.annotation.__args__ if c != default]  # type: ignore[union-attr]
    if field.annotation is bool:
        return [not default]
    is_int = "int" in annotation
    low, strict, high = _bounds(field.metadata)
    floor = _lowest(name)
    if floor is not None:
        low, strict = floor, False
    if low is None:
        low, strict = 0, True
    smallest = (low + 1 if is_int else low + 0.001) if strict else low
    largest = high if high is not None else (2**40 if is_int else 1e9)
    typical = default * 3 if isinstance(default, int | float) and default else smallest * 10
    values: list[Any] = [smallest, largest, typical]
    if "None" in annotation and default is not None:
        values.append(None)
    return [value for value in dict.fromkeys(values) if value != default]


WALK = [
    pytest.param(name, value, id=f"{name}={value!r:.30}")
    for name in Settings.model_fields
    for value in walk_values(name)
]


def test_the_walk_covers_every_field() -> None:
    walked = {param.values[0] for param in WALK}
    assert walked == set(Settings.model_fields)


@pytest.mark.parametrize(("name", "value"), WALK)
def test_changing_one_setting_never_invalidates_the_defaults(name: str, value: Any) -> None:
    """Settings(**{field: value}) validates, keeps the value, and everything it builds too."""
    from agents_persistence.tasks.worker.app import celery_config

    settings = Settings(**{name: value})
    held = getattr(settings, name)
    assert (held.get_secret_value() if isinstance(held, SecretStr) else held) == value
    # What follows from it still holds together.
    assert settings.retry_initial_backoff_seconds <= settings.retry_max_backoff_seconds
    assert settings.store_retry_span_seconds < settings.task_soft_time_limit_seconds
    assert settings.task_soft_time_limit_seconds < settings.task_time_limit_seconds
    assert settings.tombstone_ttl_seconds >= settings.redelivery_window_seconds
    # And so does everything built from it (nothing connects).
    settings.build_codec()
    settings.build_retry_policy()
    assert celery_config(settings)["task_time_limit"] == settings.task_time_limit_seconds
    store = RedisCheckpointer.from_settings(settings)
    store.close()
    # A child process rebuilding it from the environment gets the same settings.
    assert Settings(**settings.model_dump()) == settings


def test_defaults_are_what_the_table_says() -> None:
    settings = Settings()
    assert settings.tombstone_ttl_seconds == 86_400
    assert (settings.task_soft_time_limit_seconds, settings.task_time_limit_seconds) == (60, 90)
    assert settings.effective_visibility_timeout == 180
    assert settings.task_retry_span_seconds == 1 + 2 + 4 + 8 + 16 + 32 + 60 + 60
    assert settings.redelivery_window_seconds == 363
    described = Settings.model_fields["tombstone_ttl_seconds"].description or ""
    assert f"{settings.redelivery_window_seconds:.0f} s with the defaults" in described


def test_a_small_size_cap_alone_means_never_compress() -> None:
    """The issue's example: a threshold above the cap is accepted and never compresses."""
    settings = Settings(max_snapshot_bytes=10_000)
    codec = settings.build_codec()
    assert codec.compress_threshold == 16 * 1024 > codec.max_snapshot_bytes
    from tests.support import sample_state

    body = codec.dump_json(sample_state())
    assert codec.unpack("t", codec.pack(body, 7, 0)).version == 7
    assert codec.pack(body, 7, 0).endswith(body)  # stored as it is, not compressed


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"task_soft_time_limit_seconds": 100}, {"task_time_limit_seconds": 130}),
        ({"task_time_limit_seconds": 30}, {"task_soft_time_limit_seconds": 25}),
        (
            {"retry_deadline_seconds": 100},
            {"task_soft_time_limit_seconds": 115, "task_time_limit_seconds": 145},
        ),
        ({"retry_initial_backoff_seconds": 5}, {"retry_max_backoff_seconds": 5}),
        ({"retry_max_backoff_seconds": 0.01}, {"retry_initial_backoff_seconds": 0.01}),
        ({"visibility_timeout_seconds": 100_000}, {"tombstone_ttl_seconds": 100_183}),
        ({"task_retry_backoff_max_seconds": 100_000}, {"tombstone_ttl_seconds": 100_375}),
    ],
    ids=["soft-raises-hard", "hard-lowers-soft", "store-call-raises-both", "initial-raises-max",
         "max-lowers-initial", "visibility-lengthens-tombstone", "backoff-lengthens-tombstone"],
)  # fmt: skip
def test_unset_fields_follow_the_one_that_was_set(
    values: dict[str, Any], expected: dict[str, float]
) -> None:
    settings = Settings(**values)
    assert {name: getattr(settings, name) for name in expected} == expected
    assert not set(expected) & settings.model_fields_set


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"tombstone_ttl_seconds": 362}, "tombstone_ttl_seconds"),
        ({"task_soft_time_limit_seconds": 20}, "task_soft_time_limit_seconds"),
        ({"task_time_limit_seconds": 20}, "task_time_limit_seconds"),
    ],
    ids=["tombstone", "soft-limit", "hard-limit"],
)
def test_a_value_outside_its_own_range_is_refused_naming_it(
    values: dict[str, Any], named: str
) -> None:
    """Below a floor set by the other fields' defaults: the error names the field that was
    set (and the floor), never one the user did not touch as the culprit."""
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    (error,) = info.value.errors()
    assert error["msg"].startswith(f"Value error, {named} must")


def test_the_worker_countdowns_come_from_the_schedule_the_settings_sum() -> None:
    """One Backoff: the task's countdown draws from it, the tombstone check sums it."""
    from agents_persistence.tasks.protocol.names import SAVE_TASK
    from agents_persistence.tasks.worker.app import create_app

    settings = Settings(eager=True, broker_url="memory://", task_retry_backoff_max_seconds=5)
    task = create_app(settings).tasks[SAVE_TASK]
    ceilings = []
    for retries in range(6):
        task.push_request(retries=retries)
        try:
            countdown = task.countdown()  # type: ignore[attr-defined]
        finally:
            task.pop_request()
        ceiling = settings.task_backoff.ceiling(retries)
        assert ceiling / 2 <= countdown <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [1, 2, 4, 5, 5, 5]
    assert settings.task_retry_span_seconds == sum(ceilings[: settings.task_max_retries]) + 5 * (
        settings.task_max_retries - 6
    )
