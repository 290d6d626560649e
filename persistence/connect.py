"""Store URLs to redis-py clients: one server, a Redis Cluster, or a Sentinel-watched primary.

* ``redis://[[user]:pw@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path.sock``:
  ``redis.Redis.from_url`` (asyncio: the same on ``redis.asyncio``).
* ``redis+cluster://[[user]:pw@]host:port[,host:port...]`` (``rediss+cluster://``: TLS):
  ``RedisCluster`` seeded from those nodes.
* ``redis+sentinel://[[user]:pw@]host:port[,host:port...]/<service>[/<db>]``
  (``rediss+sentinel://``: TLS): ``Sentinel(nodes).master_for(service)``, the primary the
  sentinels name, followed across failovers.

The user info (``user:password``, or ``?password=``) authenticates with the data nodes; a
sentinel's own password, if it has one, is ``?sentinel_password=`` (``?sentinel_username=``).
Other query options are those redis-py's ``from_url`` reads (``ssl_cert_reqs``,
``ssl_ca_certs``, ``socket_timeout``...). Errors name the URL with its passwords redacted
(:func:`~agents_persistence.config.urls.redact_url`); no client's repr shows a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.sentinel as asentinel
import redis.cluster
import redis.sentinel
from agents_persistence.config.urls import redact_url
from agents_persistence.errors import StoreMisconfigured, StoreUnavailable
from redis._parsers import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer, parse_url
from redis.utils import HIREDIS_AVAILABLE

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "CommandPacker",
    "InvalidStoreURL",
    "StoreURL",
    "asyncio_client",
    "blocking_client",
    "is_cluster",
    "parse_store_url",
]

CLUSTER_SCHEMES: Final = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES: Final = frozenset({"redis+sentinel", "rediss+sentinel"})
_DEFAULT_PORT: Final = 6379
_DEFAULT_SENTINEL_PORT: Final = 26379
#: Options of a single-server connection that a cluster or sentinel client sets itself.
_NODE_OPTIONS: Final = frozenset({"host", "port", "db", "path", "connection_class"})
_SENTINEL_QUERY: Final = ("sentinel_password", "sentinel_username")

Kind = Literal["single", "cluster", "sentinel"]

#: Arguments from this size on are sent as their own buffer, never copied into the packed
#: command (redis-py's own cut-off for its pure-Python packer).
_LARGE_ARG: Final = 6000


class CommandPacker:
    """Packs commands for redis-py's connections: with hiredis for commands of small
    arguments, and without copying a large bytes argument (a record) into the packed
    command, which hiredis's packer does: a second allocation and copy of the record's
    size (a ``MULTI; SET <1 MB>; ZADD; EXEC`` took 4.4 ms with it and 0.7 ms sending the
    value as its own buffer, median of 500 each, on a loaded 2-vCPU machine). Replies are
    still parsed by hiredis.

    Given to a single server's connections by :func:`blocking_client` (``command_packer``),
    unless the caller chooses an encoding or a packer of its own.
    """

    __slots__ = ("_chunked", "_small")

    def __init__(self) -> None:
        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
        encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
        self._chunked = PythonRespSerializer(_LARGE_ARG, encoder.encode)

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        """The command as buffers to send in order."""
        if self._small is not None:
            for arg in args:
                if isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) > _LARGE_ARG:
                    break
            else:
                return self._small.pack(*args)  # type: ignore[no-any-return]
        return self._chunked.pack(*args)  # type: ignore[no-untyped-call, no-any-return]


#: Stateless: shared by every connection.
_PACKER: Final = CommandPacker()


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL (``repr`` shows no password).

    Attributes:
        kind: ``single``, ``cluster`` or ``sentinel``.
        raw: the URL as given (secret).
        nodes: the cluster's seed nodes or the sentinels (empty for ``single``).
        service: the sentinels' name of the primary.
        db: the database (``single``, ``sentinel``; a cluster has only 0).
        tls: ``rediss+...``.
        options: connection options for the data nodes (credentials, TLS and socket options
            from the user info and the query).
        sentinel_options: credentials for the sentinels themselves.
    """

    kind: Kind
    raw: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    sentinel_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def redacted(self) -> str:
        """The URL with its passwords replaced by ``***``."""
        return redact_url(self.raw)


class InvalidStoreURL(StoreMisconfigured, ValueError):
    """A store URL that cannot be used (a ``ValueError`` too, as redis-py's own URL errors
    are); its message names the URL with passwords redacted."""


def _bad(raw: str, why: str) -> InvalidStoreURL:
    return InvalidStoreURL("", f"store URL {redact_url(raw)} {why}")


def _nodes(raw: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    found: list[tuple[str, int]] = []
    for raw_item in hosts.split(","):
        item = raw_item.strip()
        if not item:
            raise _bad(raw, "has an empty host in its host list")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise _bad(raw, f"has a port that is not a number: {port_text!r}") from None
        if not host or not 0 < port < 65536:
            raise _bad(raw, f"has an invalid host:port {item!r}")
        found.append((host, port))
    return tuple(found)


def parse_store_url(url: str) -> StoreURL:
    """Parse any store URL (see the module's table).

    Raises:
        InvalidStoreURL: an unknown scheme, no host, a bad port, no sentinel service.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _bad(url, "cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return StoreURL("single", url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES | SENTINEL_SCHEMES:
        raise _bad(
            url,
            "has an unknown scheme; use redis://, rediss://, unix://, redis+cluster://, "
            "rediss+cluster://, redis+sentinel:// or rediss+sentinel://",
        )
    tls = scheme.startswith("rediss")
    sentinel = scheme in SENTINEL_SCHEMES
    nodes = _nodes(url, parts.netloc, _DEFAULT_SENTINEL_PORT if sentinel else _DEFAULT_PORT)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    sentinel_options = {
        k.removeprefix("sentinel_"): v for k, v in pairs if k in _SENTINEL_QUERY and v
    }
    query = urlencode([(k, v) for k, v in pairs if k not in _SENTINEL_QUERY])
    # redis-py's own parser reads the credentials and the query options for the data nodes
    userinfo = parts.netloc.rpartition("@")[0]
    single = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}x/0"
    try:
        options = parse_url(f"{single}?{query}" if query else single)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise _bad(url, f"has an invalid option ({exc.__class__.__name__})") from None
    options = {k: v for k, v in options.items() if k not in _NODE_OPTIONS}
    if tls:
        options["ssl"] = True
    service, db = "", 0
    path = [unquote(p) for p in parts.path.split("/") if p]
    if sentinel:
        if not path or len(path) > 2:
            raise _bad(
                url, "must name the primary's service: redis+sentinel://host:port/<service>"
            )
        service = path[0]
        if len(path) == 2:
            if not path[1].isdigit():
                raise _bad(url, f"has a database that is not a number: {path[1]!r}")
            db = int(path[1])
    elif path and path != ["0"]:
        raise _bad(url, "names a database: a Redis Cluster has only database 0")
    return StoreURL(
        "cluster" if not sentinel else "sentinel",
        url,
        nodes=nodes,
        service=service,
        db=db,
        tls=tls,
        options=options,
        sentinel_options=sentinel_options,
    )


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (blocking or asyncio)."""
    return isinstance(client, (redis.cluster.RedisCluster, acluster.RedisCluster))


class _SentinelPrimary(redis.Redis):
    """The primary a Sentinel names; closing it closes the connections to the sentinels."""

    def close(self) -> None:
        super().close()
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            sentinel.close()


class _AsyncSentinelPrimary(aredis.Redis):
    """The asyncio twin of :class:`_SentinelPrimary`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


def _sentinel_kwargs(parsed: StoreURL, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        k: v
        for k, v in options.items()
        if k in ("socket_timeout", "socket_connect_timeout", "ssl") or k.startswith("ssl_")
    }
    return {**kwargs, **parsed.sentinel_options}


def blocking_client(url: str, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A blocking redis-py client for any store URL; ``options`` (timeouts, ``retry``...)
    apply to every data node's connections (query options of the URL win).

    Raises:
        InvalidStoreURL: the URL cannot be used.
        StoreUnavailable: a cluster none of whose seed nodes answered (or accepted the
            credentials): redis-py's cluster client connects when it is built.
    """
    parsed = parse_store_url(url)
    if parsed.kind == "single":
        if "encoding" not in urlsplit(url).query and not (
            {"encoding", "encoding_errors", "command_packer"} & options.keys()
        ):
            options["command_packer"] = _PACKER
        return redis.Redis.from_url(url, **options)
    merged = {**options, **parsed.options}
    if parsed.kind == "cluster":
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes]  # type: ignore[no-untyped-call]
        try:  # redis-py's cluster client reads the slot map here, not at the first command
            return redis.cluster.RedisCluster(startup_nodes=nodes, **merged)
        except (redis.exceptions.RedisClusterException, redis.RedisError) as exc:
            raise StoreUnavailable(
                f"no node of the Redis Cluster {parsed.redacted} answered with its slot map "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.nodes), sentinel_kwargs=_sentinel_kwargs(parsed, merged), **merged
    )
    primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.service, db=parsed.db, redis_class=_SentinelPrimary
    )
    return primary


def asyncio_client(url: str, **options: Any) -> aredis.Redis | acluster.RedisCluster:
    """The asyncio twin of :func:`blocking_client`. A ``max_connections`` option makes a
    single server's or a sentinel primary's pool wait for a free connection rather than
    refuse one (a cluster keeps that many per node)."""
    parsed = parse_store_url(url)
    if parsed.kind == "single":
        options.setdefault("max_connections", 64)
        pool = aredis.BlockingConnectionPool.from_url(url, **options)
        return aredis.Redis.from_pool(pool)
    merged = {**options, **parsed.options}
    if parsed.kind == "cluster":
        nodes = [acluster.ClusterNode(host, port) for host, port in parsed.nodes]
        return acluster.RedisCluster(startup_nodes=nodes, **merged)
    sentinel = asentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.nodes), sentinel_kwargs=_sentinel_kwargs(parsed, merged), **merged
    )
    primary: aredis.Redis = sentinel.master_for(
        parsed.service, db=parsed.db, redis_class=_AsyncSentinelPrimary
    )
    return primary
