"""One typed ``Settings`` for the whole project, read from the environment.

Every variable carries the prefix ``AGENTS_PERSISTENCE_`` (``AGENTS_PERSISTENCE_REDIS_URL``,
``AGENTS_PERSISTENCE_TTL_SECONDS``, ...); a ``.env`` file in the working directory is read too,
and keyword arguments win over both: ``Settings(redis_url=..., namespace=...)``.

URLs are held as :class:`pydantic.SecretStr`, so a password inside them never reaches a
``repr``, a log line or a validation error (its ``str()``, ``errors()`` and ``json()`` alike:
inputs are redacted before the error leaves ``Settings``); :func:`redact_url` gives the
printable form, ``?password=`` included (:mod:`agents_persistence.config.urls`).

Each namespace has a queue of its own unless ``queue`` is set
(:func:`~agents_persistence.config.urls.queue_for`): fleets of different namespaces on one
broker never see each other's hand-offs.

Changing one setting never makes the others' defaults invalid. Where a check relates two
fields, the one left unset follows the one that was set (a larger soft time limit raises the
hard one, a longer retry span lengthens the tombstone lifetime, ...); a value is refused only
when it cannot work with values that were set too, or falls outside its own documented
range. A compression threshold above the size cap simply never compresses. One value needs
another field set: ``queue_type = "quorum"`` is a RabbitMQ queue type, refused unless
``broker_url`` is a RabbitMQ URL (the default broker, the store's Redis, has nothing to follow).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from agents_persistence.backoff import Backoff
from agents_persistence.config.urls import (
    DEFAULT_QUEUE,
    SENTINEL_BROKER_SCHEMES,
    SentinelBroker,
    password_in_userinfo,
    query_problem,
    queue_for,
    redact_url,
    sentinel_broker,
)
from agents_persistence.validation import MAX_TTL_SECONDS, check_namespace
from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from agents_persistence.codec import Codec
    from agents_persistence.retry import RetryPolicy

__all__ = ["Settings", "redact_url"]

#: Fields that hold URLs, and so maybe passwords.
_URL_FIELDS = frozenset({"redis_url", "broker_url"})
#: Defaults of the fields that follow others when left unset (see ``_derive_and_check``).
_TOMBSTONE_TTL = 86_400.0
_SOFT_LIMIT = 60.0
_HARD_LIMIT = 90.0
#: The soft limit leaves this much beyond one store call (with its retries) when derived,
#: and the hard limit this much beyond the soft one: time to publish a retry.
_SOFT_MARGIN = 10.0
_HARD_MARGIN = 30.0

#: Largest size cap: a record (cap plus the load margin of a quarter) stays below Redis's
#: default largest string (proto-max-bulk-len, 512 MB).
_MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024

_REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    }
)
#: Schemes whose URL lists several ``host:port`` (agents_persistence.connect parses them).
_MULTI_HOST_SCHEMES = frozenset(s for s in _REDIS_SCHEMES if "+" in s)
#: Broker schemes of RabbitMQ, the only broker with quorum queues.
_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
_BROKER_SCHEMES = frozenset(
    {"redis", "rediss", "amqp", "amqps", "pyamqp", "memory", *SENTINEL_BROKER_SCHEMES}
)
#: Brokers whose publishes can wait for replicas (``broker_replica_acks``).
_REDIS_BROKER_SCHEMES = frozenset({"redis", "rediss", "unix", *SENTINEL_BROKER_SCHEMES})
_NO_CLUSTER_BROKER = (
    "cannot be a Redis Cluster: kombu has no Redis Cluster transport; use a separate Redis "
    "(redis://), a Sentinel group (sentinel://, redis+sentinel://) or RabbitMQ (amqp://) "
    "as the broker"
)


def _check_url(value: SecretStr, schemes: frozenset[str], what: str) -> SecretStr:
    raw = value.get_secret_value()
    scheme = raw.partition("://")[0].lower()
    if "cluster" in scheme and "cluster" not in "".join(schemes):
        raise ValueError(f"{what} {_NO_CLUSTER_BROKER}")
    if scheme in schemes and scheme in SENTINEL_BROKER_SCHEMES:
        try:
            sentinel_broker(raw)
        except ValueError as exc:
            raise ValueError(f"{what} {exc}") from None
        return value
    try:
        parts = urlsplit(raw)
        multi_host = parts.scheme in _MULTI_HOST_SCHEMES  # host:port,host:port,...
        if not multi_host:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL") from exc
    if multi_host and not all(h.strip() for h in parts.netloc.rpartition("@")[2].split(",")):
        raise ValueError(f"{what} has an empty host")
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ValueError(f"{what} must use one of the schemes {allowed}")
    if parts.scheme not in {"unix", "memory"} and not parts.hostname:
        raise ValueError(f"{what} has no host")
    problem = query_problem(parts)
    if problem:
        raise ValueError(f"{what} {problem}")
    return value


def _safe_input(loc: tuple[int | str, ...], value: object) -> object:
    """An error's input with every URL redacted (a model-level input: known fields only)."""
    if loc and loc[0] in _URL_FIELDS:
        return _redact_any(value)
    if isinstance(value, Mapping):
        return {
            key: _redact_any(item) if key in _URL_FIELDS else item
            for key, item in value.items()
            if key in Settings.model_fields
        }
    return value


def _redact_any(value: object) -> str:
    if value is None or isinstance(value, (str, SecretStr)):
        return redact_url(value)
    return "<redacted>"


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
        default=None,
        description="Celery broker URL: redis://, rediss://, sentinel:// (kombu's spelling) or "
        "redis+sentinel:// (the store's), amqp://; default: the store's server (a Redis "
        "Cluster cannot be a broker).",
    )
    broker_master_name: str | None = Field(
        default=None,
        min_length=1,
        description="The service name of a sentinel:// broker (kombu's master_name); a "
        "redis+sentinel:// broker URL names it in its path.",
    )
    namespace: str = Field(default="agents", description="First segment of every key.")
    queue: str = Field(
        default=DEFAULT_QUEUE,
        min_length=1,
        max_length=200,
        description="Celery queue the hand-offs go to and the workers consume; unset: the "
        "namespace's own (agents_persistence for the namespace agents, "
        "agents_persistence.<namespace> for any other).",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        default="classic",
        description="RabbitMQ type of that queue: classic, or quorum (replicated over the "
        "RabbitMQ cluster; retries' countdowns wait in the broker). Needs an amqp:// or "
        "amqps:// broker. A queue keeps the type it was created with: to switch, use a new "
        "queue name or delete the drained queue.",
    )

    # -- retention ------------------------------------------------------------------------
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="Lifetime of a thread's state; refreshed by each save (at most 100 years).",
    )
    tombstone_ttl_seconds: float = Field(
        default=_TOMBSTONE_TTL,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="How long a delete's tombstone keeps older saves out. At least the "
        "visibility timeout plus the whole task retry span (363 s with the defaults); unset: "
        "a day, or that sum if longer.",
    )

    # -- payloads -------------------------------------------------------------------------
    max_snapshot_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=_MAX_SNAPSHOT_BYTES,
        description="Largest snapshot accepted, in bytes of JSON (SnapshotTooLarge above).",
    )
    compress_threshold_bytes: int | None = Field(
        default=16 * 1024,
        ge=0,
        description="Compress stored JSON at or above this; None (or above "
        "max_snapshot_bytes): never.",
    )
    compression: Literal["zstd", "zlib"] = Field(
        default="zstd",
        description="What stored JSON from compress_threshold_bytes on is compressed with: "
        "zstd, or zlib (for readers of releases before zstd); both are always read.",
    )

    # -- durability against a failover ------------------------------------------------------
    replica_acks: int = Field(
        default=0,
        ge=0,
        le=100,
        description="A save or delete counts (is acknowledged, then the broker message) only "
        "once this many replicas hold it (WAIT in the same round trip; retried, then "
        "ReplicaAcksMissing); 0: don't wait (replication is asynchronous: a failover may lose "
        "the last writes).",
    )
    replica_ack_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How long one write waits for its replica acks before it is retried.",
    )
    broker_replica_acks: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="A Redis broker accepts a message (a hand-off, a worker's retry) only once "
        "this many replicas hold it (WAIT after the push; else the publish is retried, then "
        "fails); unset: replica_acks on a Sentinel broker, 0 on any other.",
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
        default=0.05,
        gt=0,
        description="First wait between store retries (before jitter); unset: lowered to "
        "retry_max_backoff_seconds if that is set lower.",
    )
    retry_max_backoff_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest single wait between store retries; unset: raised to "
        "retry_initial_backoff_seconds if that is set higher.",
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
        "dead-lettered (or, while even that is impossible, given back to the queue).",
    )
    task_retry_backoff_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest countdown between two Celery retries (retry n waits 2**n s, "
        "jittered down to half, at most this).",
    )
    task_soft_time_limit_seconds: float = Field(
        default=_SOFT_LIMIT,
        gt=0,
        description="Soft time limit of one task (then it is retried). Must exceed one store "
        "call with all its retries (retry_deadline_seconds + socket_timeout_seconds); unset: "
        "60 s, or that call plus 10 s if longer, or between the two if task_time_limit_seconds "
        "is set lower.",
    )
    task_time_limit_seconds: float = Field(
        default=_HARD_LIMIT,
        gt=0,
        description="Hard time limit of one task (its process is replaced, the message goes "
        "back to the queue); above the soft limit; unset: 90 s, or the soft limit plus 30 s if "
        "longer.",
    )
    visibility_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Redis broker redelivery delay for unacknowledged messages; unset: the "
        "hard time limit plus the longest retry countdown plus 30 s (180 s).",
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
        default=500,
        ge=1,
        le=10_000,
        description="Most snapshots in one batch message (a worker's cost per message is "
        "spread over its snapshots: 500 cut its CPU per snapshot by a third against 100).",
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
        description="Hand-off buffer size (buffered mode). An agent crash loses at most this "
        "many waiting, plus the batch being published (taken from them).",
    )
    buffer_full_policy: Literal["block", "raise"] = Field(
        default="block", description="When the buffer is full: block save_state, or raise."
    )

    # -- operations -------------------------------------------------------------------------
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Workers serve Prometheus metrics on this port (/metrics, every pool "
        "process's counts); unset: no metrics endpoint.",
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry spans (extra [otel]) around hand-offs and worker writes, "
        "the trace context carried in message headers.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Workers' log lines: text, or json (one JSON object per line, with the "
        "task, thread_id, version and outcome as fields where known).",
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

    @field_validator("broker_master_name")
    @classmethod
    def _master_name_ok(cls, v: str | None) -> str | None:
        if v is not None and (v != v.strip() or "/" in v or ";" in v):
            raise ValueError("broker_master_name has spaces around it, or a / or ;")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace_ok(cls, v: str) -> str:
        return check_namespace(v)

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        """Fill the fields that follow others, then refuse what cannot work.

        A field the user left unset never makes the others invalid: it follows them. Only
        values that were set (by keyword, environment or ``.env``) can conflict.
        """
        given = self.model_fields_set
        if "queue" not in given:
            self._derive("queue", queue_for(self.namespace))
        if self.retry_max_backoff_seconds < self.retry_initial_backoff_seconds:
            if "retry_max_backoff_seconds" not in given:
                self._derive("retry_max_backoff_seconds", self.retry_initial_backoff_seconds)
            elif "retry_initial_backoff_seconds" not in given:
                self._derive("retry_initial_backoff_seconds", self.retry_max_backoff_seconds)
            else:
                raise ValueError(
                    "retry_max_backoff_seconds is below retry_initial_backoff_seconds"
                )
        self._time_limits(given)
        self._broker_replication(given)
        if self.queue_type == "quorum":
            scheme = urlsplit(self.broker.get_secret_value()).scheme
            if scheme not in _AMQP_SCHEMES:
                raise ValueError(
                    "queue_type quorum needs a RabbitMQ broker (amqp:// or amqps://), "
                    f"not a {scheme}:// broker: quorum queues are RabbitMQ's"
                )
        floor = self.redelivery_window_seconds
        if "tombstone_ttl_seconds" not in given:
            self._derive("tombstone_ttl_seconds", max(_TOMBSTONE_TTL, floor))
        elif self.tombstone_ttl_seconds < floor:
            raise ValueError(
                "tombstone_ttl_seconds must cover the visibility timeout plus the task retry "
                f"span ({floor:.0f}s): a redelivered older save could otherwise outlive it"
            )
        return self

    def _time_limits(self, given: set[str]) -> None:
        """Soft and hard time limits: derived when unset, checked against one store call."""
        call = self.store_retry_span_seconds
        call_text = (
            "one store call with all its retries (retry_deadline_seconds + "
            f"socket_timeout_seconds = {call:g}s)"
        )
        hard = self.task_time_limit_seconds
        if "task_soft_time_limit_seconds" not in given:
            soft = max(_SOFT_LIMIT, call + _SOFT_MARGIN)
            if "task_time_limit_seconds" in given and soft >= hard:
                if hard <= call:
                    raise ValueError(f"task_time_limit_seconds must exceed {call_text}")
                soft = (call + hard) / 2
            self._derive("task_soft_time_limit_seconds", soft)
        soft = self.task_soft_time_limit_seconds
        if "task_time_limit_seconds" not in given:
            self._derive("task_time_limit_seconds", max(_HARD_LIMIT, soft + _HARD_MARGIN))
        if soft >= self.task_time_limit_seconds:
            raise ValueError("task_soft_time_limit_seconds must be below task_time_limit_seconds")
        if soft <= call:
            raise ValueError(f"task_soft_time_limit_seconds must exceed {call_text}")

    def _broker_replication(self, given: set[str]) -> None:
        """The Sentinel broker's service name, and the replicas a broker message waits for."""
        raw = (self.broker_url or self.redis_url).get_secret_value()
        scheme = raw.partition("://")[0].lower()
        sentinel = sentinel_broker(raw) if self.broker_url is not None else None
        if self.broker_url is None and scheme in SENTINEL_BROKER_SCHEMES:
            sentinel = sentinel_broker(raw)  # the store's own URL, checked as the store's
        if sentinel is not None:
            named, master = sentinel.master_name, self.broker_master_name
            if named is not None and master is not None and named != master:
                raise ValueError(
                    "broker_master_name differs from the service the broker URL names"
                )
            if named is None and master is None:
                raise ValueError(
                    "a sentinel:// broker_url needs broker_master_name (the service the "
                    "sentinels know the primary by), or write it as "
                    "redis+sentinel://host:port,host:port/<service>"
                )
        if "broker_replica_acks" not in given:
            acks = self.replica_acks if sentinel is not None else 0
            self._derive("broker_replica_acks", acks)
        elif self.broker_replica_acks and scheme not in _REDIS_BROKER_SCHEMES:
            raise ValueError(
                "broker_replica_acks applies to Redis brokers (redis://, rediss://, "
                "sentinel://); RabbitMQ replicates with publisher confirms on its own queues"
            )

    def _derive(self, name: str, value: object) -> None:
        # Settings are frozen; this runs once, inside validation, for a field left unset.
        self.__dict__[name] = value

    @model_validator(mode="wrap")
    @classmethod
    def _errors_without_secrets(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        """Re-raise validation errors with every URL in their inputs redacted.

        Defined after the other validators, so it wraps them all (model-level errors too).

        ``hide_input_in_errors`` keeps inputs out of ``str()`` only; ``errors()`` and
        ``json()`` would still hold the raw URL (and a model-level error holds every input).
        """
        try:
            return handler(data)
        except ValidationError as exc:
            details = [
                InitErrorDetails(
                    type=PydanticCustomError(error["type"], error["msg"]),
                    loc=error["loc"],
                    input=_safe_input(error["loc"], error["input"]),
                )
                for error in exc.errors(include_url=False, include_context=False)
            ]
            raise ValidationError.from_exception_data(
                exc.title, details, hide_input=True
            ) from None

    # -- derived values -----------------------------------------------------------------------
    @property
    def broker(self) -> SecretStr:
        """The broker URL actually used (the store's server unless set), its password in
        the user info even if it was given as ``?password=`` (kombu reads only that); a
        Sentinel broker in kombu's spelling (:attr:`broker_sentinel`)."""
        sentinel = self.broker_sentinel
        if sentinel is not None:
            return SecretStr(sentinel.url)
        url = self.broker_url if self.broker_url is not None else self.redis_url
        return SecretStr(password_in_userinfo(url.get_secret_value()))

    @property
    def broker_sentinel(self) -> SentinelBroker | None:
        """The broker behind Redis Sentinel, its service name resolved; None for any other
        broker."""
        url = self.broker_url if self.broker_url is not None else self.redis_url
        found = sentinel_broker(url.get_secret_value())
        if found is None or found.master_name is not None:
            return found
        return SentinelBroker(
            url=found.url,
            sentinels=found.sentinels,
            master_name=self.broker_master_name,
            tls=found.tls,
            sentinel_options=found.sentinel_options,
            ssl_options=found.ssl_options,
        )

    @property
    def task_backoff(self) -> Backoff:
        """The countdowns between Celery retries of a task (the worker draws from it)."""
        return Backoff(cap=self.task_retry_backoff_max_seconds)

    @property
    def task_retry_span_seconds(self) -> float:
        """Upper bound of the time a save can spend in Celery retries (countdowns only)."""
        return self.task_backoff.span(self.task_max_retries)

    @property
    def redelivery_window_seconds(self) -> float:
        """The longest an older save can still be on its way: the visibility timeout plus
        the whole task retry span. Tombstones must outlive it."""
        return self.effective_visibility_timeout + self.task_retry_span_seconds

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

    # -- what the settings build --------------------------------------------------------------
    def build_codec(self) -> Codec:
        """The store's codec: size cap, compression threshold and algorithm."""
        from agents_persistence.codec import Codec

        return Codec(
            max_snapshot_bytes=self.max_snapshot_bytes,
            compress_threshold=self.compress_threshold_bytes,
            compression=self.compression,
        )

    def build_retry_policy(self) -> RetryPolicy:
        """The store's retry policy (tenacity bounds of one store call)."""
        from agents_persistence.retry import RetryPolicy

        return RetryPolicy(
            attempts=self.retry_attempts,
            initial_backoff=self.retry_initial_backoff_seconds,
            max_backoff=self.retry_max_backoff_seconds,
            deadline=self.retry_deadline_seconds,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings are frozen: this always raises; keep a URL out of the error it raises.
        super().__setattr__(name, _safe_input((name,), value))

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            if name in {"redis_url", "broker_url"} and value is not None:
                yield name, redact_url(value)
            else:
                yield name, value
