"""What the blocking and the asyncio Redis stores share: construction (from a ready client,
a URL or :class:`~agents_persistence.config.Settings`), keys, retry policy and operations.

Each store only says how it connects (:meth:`RedisStoreBase._connect`) and how a request
reaches the server; what it sends and what the replies mean is
:class:`~agents_persistence.redis_ops.RedisOps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from agents_persistence.base import (
    DEFAULT_NAMESPACE,
    DEFAULT_TOMBSTONE_TTL,
    CheckpointerCore,
    TTLLike,
    to_milliseconds,
)
from agents_persistence.codec import Codec
from agents_persistence.connect import is_cluster
from agents_persistence.keys import DEFAULT_SHARDS, Keys
from agents_persistence.redis_ops import RedisOps
from agents_persistence.retry import RetryPolicy
from agents_persistence.versions import VersionClock

if TYPE_CHECKING:
    from agents_persistence.config.settings import Settings

__all__ = ["RedisStoreBase"]

ClientT = TypeVar("ClientT")


class RedisStoreBase(CheckpointerCore, Generic[ClientT]):
    """Agent state in Redis, with versioned writes, TTL, a thread index and retries.

    Args:
        client: a redis-py client (or fakeredis's) with ``decode_responses`` off. Its own
            retry should be disabled; :meth:`from_url` does that, so the policy below is
            the only one.
        namespace: first segment of every key (letters, digits, ``_.-``).
        ttl: lifetime of a thread's state after each save (``timedelta`` or seconds,
            millisecond precision), or None to keep it.
        tombstone_ttl: how long a delete keeps older saves out.
        codec: encoding, size cap and compression.
        retry: the transient-error policy.
        clock: where versions come from when a caller gives none.
        index_shards: index shards of the namespace if this store is the first to meet it
            (afterwards the namespace's layout key says; see :mod:`agents_persistence.keys`).
        replica_acks: a save or delete returns only once this many replicas hold it (``WAIT``
            in the same round trip); short of that it is retried, then
            :class:`~agents_persistence.errors.ReplicaAcksMissing`. 0: don't wait.
        replica_ack_timeout: how long one write waits for them (``timedelta`` or seconds).
    """

    def __init__(
        self,
        client: ClientT,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        retry: RetryPolicy | None = None,
        clock: VersionClock | None = None,
        index_shards: int = DEFAULT_SHARDS,
        replica_acks: int = 0,
        replica_ack_timeout: TTLLike = 1.0,
    ) -> None:
        super().__init__(
            namespace=namespace, ttl=ttl, tombstone_ttl=tombstone_ttl, codec=codec, clock=clock
        )
        self.client = client
        self.retry = retry if retry is not None else RetryPolicy()
        if isinstance(replica_acks, bool) or not isinstance(replica_acks, int) or replica_acks < 0:
            raise ValueError(f"replica_acks must be a non-negative int, got {replica_acks!r}")
        self._ops = RedisOps(
            Keys(namespace),
            self.codec,
            self.ttl_ms,
            self.tombstone_ttl_ms,
            cluster=is_cluster(client),
            shards=index_shards,
            replica_acks=replica_acks,
            replica_ack_timeout_ms=to_milliseconds(replica_ack_timeout, "replica_ack_timeout")
            or 1000,
        )

    @property
    def layout_keys(self) -> Keys:
        """The namespace's keys as known so far: the sharded layout of new namespaces until
        the first call read the namespace's layout key."""
        return self._ops.keys

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: TTLLike = None,
        tombstone_ttl: TTLLike = DEFAULT_TOMBSTONE_TTL,
        codec: Codec | None = None,
        retry: RetryPolicy | None = None,
        clock: VersionClock | None = None,
        replica_acks: int = 0,
        replica_ack_timeout: TTLLike = 1.0,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        **redis_kwargs: Any,
    ) -> Self:
        """Connect to ``url``: ``redis://``, ``rediss://`` (TLS), ``unix://``, a Redis Cluster
        (``redis+cluster://host:port,host:port``, ``rediss+cluster://``) or the primary that
        Sentinels name (``redis+sentinel://host:port,.../<service>[/<db>]``); see
        :mod:`agents_persistence.connect`.

        Extra keyword arguments go to the client's ``from_url`` (``max_connections``,
        ``ssl_ca_certs``, ...).
        """
        client = cls._connect(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=30,
            **redis_kwargs,
        )
        return cls(
            client,
            namespace=namespace,
            ttl=ttl,
            tombstone_ttl=tombstone_ttl,
            codec=codec,
            retry=retry,
            clock=clock,
            replica_acks=replica_acks,
            replica_ack_timeout=replica_ack_timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build from :class:`config.Settings` (URL, namespace, TTLs, caps, retry bounds)."""
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            namespace=settings.namespace,
            ttl=settings.ttl_seconds,
            tombstone_ttl=settings.tombstone_ttl_seconds,
            codec=settings.build_codec(),
            retry=settings.build_retry_policy(),
            replica_acks=settings.replica_acks,
            replica_ack_timeout=settings.replica_ack_timeout_seconds,
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_connect_timeout_seconds,
        )

    @classmethod
    def _connect(cls, url: str, **options: Any) -> ClientT:
        """A client for ``url`` with ``options``, its own retries off."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, ttl={self.ttl!r})"
