"""One typed ``Settings`` for the whole project, read from the environment.

Every variable carries the prefix ``AGENTS_PERSISTENCE_`` (``AGENTS_PERSISTENCE_REDIS_URL``,
``AGENTS_PERSISTENCE_TTL_SECONDS``, ...); a ``.env`` file in the working directory is read too,
and keyword arguments win over both: ``Settings(redis_url=..., namespace=...)``.

URLs are held as :class:`pydantic.SecretStr`, so a password inside them never reaches a
``repr``, a log line or a validation error; :func:`redact_url` gives the printable form.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["NAMESPACE_PATTERN", "Settings", "redact_url"]

#: Namespaces become the first segment of every key; a ``:`` inside one would let two
#: namespaces overlap (``a`` + ``b:x`` vs ``a:b`` + ``x``), so it is refused.
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp", "memory"})


def redact_url(url: str | SecretStr | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to print or log)."""
    if url is None:
        return "-"
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        parts = urlsplit(raw)
        if parts.password is None:
            return raw
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparseable url>"


def _check_url(value: SecretStr, schemes: frozenset[str], what: str) -> SecretStr:
    raw = value.get_secret_value()
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL") from exc
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ValueError(f"{what} must use one of the schemes {allowed}")
    if parts.scheme not in {"unix", "memory"} and not parts.hostname:
        raise ValueError(f"{what} has no host")
    return value


class Settings(BaseSettings):
    """Everything the core, the workers, beat and the CLI need.

    Build it once per process and pass it in; nothing in the project reads the environment
    elsewhere (except ``agents_persistence.tasks.app``, the Celery app that ``celery -A
    agents_persistence.tasks`` loads).
    """

    model_config = SettingsConfigDict(
        env_prefix="AGENTS_PERSISTENCE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
        # AGENTS_PERSISTENCE_TTL_SECONDS=none sets an optional field to None.
        env_parse_none_str="none",
        frozen=True,
    )

    # -- where things live ----------------------------------------------------------------
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="The store: a redis://, rediss:// or unix:// URL.",
    )
    broker_url: SecretStr | None = Field(
        default=None, description="Celery broker URL; default: the store's server."
    )
    namespace: str = Field(default="agents", description="First segment of every key.")
    queue: str = Field(
        default="agents_persistence",
        min_length=1,
        max_length=200,
        description="Celery queue the hand-offs go to and the workers consume.",
    )

    # -- retention ------------------------------------------------------------------------
    ttl_seconds: float | None = Field(
        default=None, gt=0, description="Lifetime of a thread's state; refreshed by each save."
    )
    tombstone_ttl_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="How long a delete's tombstone keeps older saves out. Must cover the "
        "visibility timeout plus the whole task retry span.",
    )

    # -- payloads -------------------------------------------------------------------------
    max_snapshot_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest snapshot accepted, in bytes of JSON (SnapshotTooLarge above).",
    )
    compress_threshold_bytes: int | None = Field(
        default=16 * 1024, ge=0, description="Compress stored JSON at or above this; None: never."
    )

    # -- the store's connection and retry policy (tenacity) --------------------------------
    socket_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of one store command."
    )
    socket_connect_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Timeout of connecting to the store (and to the broker, at most "
        "publish_timeout_seconds).",
    )
    retry_attempts: int = Field(
        default=5, ge=1, le=100, description="Retries of one store call after its first failure."
    )
    retry_initial_backoff_seconds: float = Field(
        default=0.05, gt=0, description="First wait between store retries (before jitter)."
    )
    retry_max_backoff_seconds: float = Field(
        default=2.0, gt=0, description="Longest single wait between store retries."
    )
    retry_deadline_seconds: float = Field(
        default=15.0, gt=0, description="Give up (StoreUnavailable) after this long in total."
    )

    # -- Celery -----------------------------------------------------------------------------
    eager: bool = Field(default=False, description="Run tasks inline (tests, development).")
    task_max_retries: int = Field(
        default=8,
        ge=0,
        le=1000,
        description="Celery retries of a task whose store stayed unavailable; then it is "
        "dead-lettered.",
    )
    task_retry_backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest countdown between two Celery retries."
    )
    task_soft_time_limit_seconds: float = Field(
        default=60.0, gt=0, description="Soft time limit of one task."
    )
    task_time_limit_seconds: float = Field(
        default=90.0, gt=0, description="Hard time limit of one task (its process is replaced)."
    )
    visibility_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Redis/SQS broker redelivery delay for unacked messages; default: derived "
        "from the time limit and the retry span.",
    )
    worker_prefetch_multiplier: int = Field(
        default=1, ge=1, description="Messages each worker process reserves ahead."
    )
    publish_max_retries: int = Field(
        default=3, ge=0, description="Publish retries at hand-off before HandOffError."
    )
    publish_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest one broker attempt may wait (connect, reply, RabbitMQ's "
        "confirm), also when the broker hangs; with publish_max_retries it bounds save_state "
        "(CeleryCheckpointer.handoff_timeout).",
    )
    write_through_on_broker_error: bool = Field(
        default=False, description="If the broker is down at hand-off, write synchronously."
    )
    resend_pending_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="flush()/wait() re-send a hand-off still not durable after this long (a "
        "broker can lose an accepted message when a worker dies); duplicates are no-ops.",
    )
    cleanup_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often beat schedules the cleanup task."
    )
    cleanup_batch_size: int = Field(
        default=10_000, ge=1, description="Most expired index entries one cleanup removes."
    )
    dead_letter_max_length: int = Field(
        default=100_000, ge=1, description="Dead letters kept per namespace (oldest dropped)."
    )

    # -- hand-off batching ------------------------------------------------------------------
    handoff_mode: Literal["durable", "buffered"] = Field(
        default="durable",
        description="durable: save_state returns once the broker has the message; buffered: "
        "at once, and a background thread publishes batches.",
    )
    batch_max_snapshots: int = Field(
        default=100, ge=1, le=10_000, description="Most snapshots in one batch message."
    )
    batch_max_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Most bytes of JSON in one batch message."
    )
    batch_linger_seconds: float = Field(
        default=0.005, ge=0, description="How long the publisher waits to fill a batch."
    )
    buffer_max_snapshots: int = Field(
        default=10_000,
        ge=1,
        description="Hand-off buffer size (buffered mode): the most an agent crash can lose.",
    )
    buffer_full_policy: Literal["block", "raise"] = Field(
        default="block", description="When the buffer is full: block save_state, or raise."
    )

    # -- validators -------------------------------------------------------------------------
    @field_validator("redis_url")
    @classmethod
    def _redis_url_ok(cls, v: SecretStr) -> SecretStr:
        return _check_url(v, _REDIS_SCHEMES, "redis_url")

    @field_validator("broker_url")
    @classmethod
    def _broker_url_ok(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _check_url(v, _BROKER_SCHEMES, "broker_url")

    @field_validator("namespace")
    @classmethod
    def _namespace_ok(cls, v: str) -> str:
        if not NAMESPACE_PATTERN.match(v):
            raise ValueError("namespace must be 1-64 characters of letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _bounds_consistent(self) -> Settings:
        if self.retry_max_backoff_seconds < self.retry_initial_backoff_seconds:
            raise ValueError("retry_max_backoff_seconds is below retry_initial_backoff_seconds")
        if self.task_soft_time_limit_seconds >= self.task_time_limit_seconds:
            raise ValueError("task_soft_time_limit_seconds must be below task_time_limit_seconds")
        if (
            self.compress_threshold_bytes is not None
            and self.compress_threshold_bytes > self.max_snapshot_bytes
        ):
            raise ValueError("compress_threshold_bytes is above max_snapshot_bytes")
        if self.task_soft_time_limit_seconds <= self.store_retry_span_seconds:
            raise ValueError(
                "task_soft_time_limit_seconds must exceed one store call with all its retries "
                f"(retry_deadline_seconds + socket_timeout_seconds = "
                f"{self.store_retry_span_seconds:.0f}s)"
            )
        floor = self.effective_visibility_timeout + self.task_retry_span_seconds
        if self.tombstone_ttl_seconds < floor:
            raise ValueError(
                "tombstone_ttl_seconds must cover the visibility timeout plus the task retry "
                f"span ({floor:.0f}s): a redelivered older save could otherwise outlive it"
            )
        return self

    # -- derived values -----------------------------------------------------------------------
    @property
    def broker(self) -> SecretStr:
        """The broker URL actually used (the store's server unless set)."""
        return self.broker_url if self.broker_url is not None else self.redis_url

    @property
    def task_retry_span_seconds(self) -> float:
        """Upper bound of the time a save can spend in Celery retries (countdowns only)."""
        total, delay = 0.0, 1.0
        for _ in range(self.task_max_retries):
            total += min(delay, self.task_retry_backoff_max_seconds)
            delay *= 2
        return total

    @property
    def store_retry_span_seconds(self) -> float:
        """Upper bound of one store call including tenacity's retries."""
        return self.retry_deadline_seconds + self.socket_timeout_seconds

    @property
    def effective_visibility_timeout(self) -> float:
        """The broker's visibility timeout: explicit, or derived.

        The Redis transport holds a retried message (with its countdown) unacked inside the
        worker, so the timeout must exceed the hard time limit plus the longest countdown, or
        healthy messages are redelivered. A shorter explicit value is allowed (it only causes
        duplicates, which the versioned writes absorb).
        """
        if self.visibility_timeout_seconds is not None:
            return self.visibility_timeout_seconds
        return self.task_time_limit_seconds + self.task_retry_backoff_max_seconds + 30.0

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            if name in {"redis_url", "broker_url"} and value is not None:
                yield name, redact_url(value)
            else:
                yield name, value
