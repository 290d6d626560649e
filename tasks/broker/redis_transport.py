"""kombu's Redis transport, without the window in which a worker crash loses a message.

kombu takes a message off the queue with ``BRPOP`` and only afterwards, in a second round
trip, records it as unacknowledged (``unacked`` hash), from where a dead worker's messages
come back after the visibility timeout. A worker killed between the two loses the message
for good (celery/kombu#305); under a steady stream the main process spends much of its
time in that window (the reply waits in the socket until the event loop reads it), and the
fault suite saw one SIGKILL in a few lose a save.

This transport closes the window the usual way for Redis queues:

* the consumer moves the message atomically to an in-flight list of its own (``BLMOVE``
  queue -> ``<prefix><channel id>``), and removes it from there in the same transaction
  that records it as unacknowledged;
* while the channel lives it keeps ``<in-flight list>:alive`` set (a lease of the
  visibility timeout, at least 10 s, renewed well before it ends);
* the periodic sweep that restores unacknowledged messages (every
  ``unacked_restore_interval``) also runs ``lua/recover_inflight.lua``: the lists of
  channels whose lease expired go back to their queues.

A message is thus always in the queue, in an in-flight list, or in ``unacked``. Recovered
messages may be delivered twice; the versioned writes make that harmless.

An entry on a queue that is not a kombu envelope of the expected shape (any bytes can be
pushed onto a list: ``LPUSH <queue> garbage``) would raise in the decode and end the worker,
the entry lost. Such an entry is moved, in one transaction with its removal from the
in-flight list, to the broker-side list ``_agents_persistence/unparsable/<queue>`` as a
bounded record (:func:`~agents_persistence.tasks.broker.envelope.unparsable_record`). The transport
does not know the namespace or the store: the worker's consumer installs
``Transport.on_unparsable`` (see :mod:`agents_persistence.tasks.worker.consumer`), and each
record is handed to it oldest first and removed once it returned, so it ends as a dead letter
of the namespace; without a hook, or while the hook fails, records wait in the bounded list
(:data:`UNPARSABLE_MAX`). Bodies compressed with anything but the layer's zstd (a
``compression`` header) are set aside the same way before kombu would decompress them; zstd
bodies inflate only within the bound of
:mod:`agents_persistence.tasks.protocol.compression`.

A channel whose connection kombu has already given up (a broker restart noticed first on the
remote-control channel) reports a connection error when asked for a new connection pool,
rather than kombu's ``AttributeError``, so the worker reconnects instead of exiting.

Replication: Redis replicates asynchronously, so a message the primary accepted can be gone
after a failover that promoted a replica it had not reached yet. With the transport option
``replica_acks`` (``Settings.broker_replica_acks``; on a Sentinel broker it follows
``replica_acks``) every push onto a task queue is followed, in the same round trip, by
``WAIT replica_acks replica_ack_timeout``: short of the acks the publish raises
:class:`ReplicaAcksShort`, a connection error, so kombu reconnects (to the primary the
sentinels name now) and publishes again, and the hand-off fails to its caller only when its
retries are spent. The pushed copy may survive too: a duplicate the versioned writes absorb.
A worker's ack needs no replica: what a failover undoes there (an unacked record, a pop)
only brings a message back.

Used for ``redis://`` and ``rediss://`` brokers (:class:`Transport`) and for brokers behind
Redis Sentinel (:class:`SentinelTransport`, kombu's ``sentinel://``), see
:func:`agents_persistence.tasks.worker.app.celery_config`: one list per queue
(``priority_steps=[0]``; the layer sends no priorities).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from queue import Empty
from typing import TYPE_CHECKING, Any, Final

import redis.exceptions
import redis.sentinel
from agents_persistence.tasks.broker.envelope import parse_entry, unparsable_record
from agents_persistence.tasks.pins import missing_internals, require_internals
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

__all__ = [
    "INFLIGHT_PREFIX",
    "INFLIGHT_REGISTRY",
    "KOMBU_INTERNALS",
    "UNPARSABLE_MAX",
    "UNPARSABLE_PREFIX",
    "Channel",
    "QoS",
    "ReplicaAcksShort",
    "SentinelChannel",
    "SentinelTransport",
    "Transport",
    "UnparsableHook",
    "check_kombu_internals",
    "envelope_json",
    "missing_kombu_internals",
]

logger = logging.getLogger(__name__)

#: Hash of every in-flight list -> the queue list it takes from. The ``/`` cannot occur in a
#: namespace, so no key of the store's layout can collide with these.
INFLIGHT_REGISTRY = "_agents_persistence/inflight"
#: Prefix of the in-flight lists (one per consuming channel and queue).
INFLIGHT_PREFIX = "_agents_persistence/inflight/"
#: Prefix of the lists of entries that were not kombu envelopes (one per queue).
UNPARSABLE_PREFIX: Final = "_agents_persistence/unparsable/"
#: Longest such list (the oldest records fall off).
UNPARSABLE_MAX: Final = 1000
#: Records handed to the hook per unparsable entry met (leftovers of earlier failures too).
_HAND_OVER_BATCH: Final = 100
_MIN_LEASE = 10.0
#: The kombu internals this module overrides or calls, written against kombu 5.7 (the pin in
#: pyproject.toml). A kombu that renamed one would silently fall back to its own pop (and
#: its loss window), so importing this module fails instead.
KOMBU_INTERNALS: dict[type, tuple[str, ...]] = {
    kombu_redis.Channel: (
        "_brpop_start", "_brpop_read", "_q_for_pri", "_flush_brpop_reauth", "_in_poll",
        "_brpop_sent_at", "conn_or_acquire", "global_keyprefix", "close", "QoS",
        "_connparams", "_create_client", "pool", "_put", "_get_message_priority",
        "from_transport_options",
    ),
    # _disconnect_pools closes the Sentinel managers _sentinel_managed_pool keeps
    kombu_redis.SentinelChannel: (
        "from_transport_options", "_sentinel_managed_pool", "_disconnect_pools",
    ),
    kombu_redis.QoS: (
        "append", "ack", "reject", "restore_visible", "pipe_or_acquire", "unacked_key",
        "unacked_index_key",
    ),
    virtual.QoS: ("append", "ack"),
    virtual.Transport: ("_deliver",),
}  # fmt: skip

#: Transport options of this module's channels (besides kombu's).
_OWN_OPTIONS: Final = ("replica_acks", "replica_ack_timeout")


class ReplicaAcksShort(redis.exceptions.ConnectionError):
    """Fewer replicas than ``replica_acks`` acknowledged a pushed message in time. A
    connection error, so that kombu's publish retry reconnects (after a failover, to the
    new primary) and publishes again."""

    def __init__(self, acks: int, required: int) -> None:
        super().__init__(
            f"only {acks} of the {required} required broker replica(s) acknowledged the "
            "message in time (WAIT)"
        )
        self.acks, self.required = acks, required


#: What the worker installs as ``Transport.on_unparsable``: takes one record (``reason``,
#: ``queue``, ``raw_bytes``, ``sha256``, ``excerpt_base64``, ``truncated``).
UnparsableHook = Callable[[dict[str, Any]], None]


def missing_kombu_internals(
    required: dict[type, tuple[str, ...]] = KOMBU_INTERNALS,
) -> list[str]:
    """``Class.attribute`` names of ``required`` that the installed kombu lacks."""
    return missing_internals(required)


def check_kombu_internals(required: dict[type, tuple[str, ...]] = KOMBU_INTERNALS) -> None:
    """Raise ImportError if the installed kombu lacks an internal this transport relies on."""
    require_internals(required, distribution="kombu", written_for="5.7", user="Redis transport")


check_kombu_internals()

_RECOVER = (
    resources.files("agents_persistence.tasks.broker").joinpath("lua", "recover_inflight.lua")
).read_text("utf-8")


_BODY_FIRST: Final = '{"body": ""'


def envelope_json(message: dict[str, Any]) -> str:
    """``kombu.utils.json.dumps(message)``, the same text, for a fraction of the CPU.

    The body of a message on a virtual transport is base64 (kombu encodes it before
    ``_put``), hundreds of kilobytes for a batch of snapshots, and the stdlib encoder checks
    every character of it for escapes while holding the GIL. Base64 needs none: the rest of
    the envelope is encoded with an empty body, and the body put between its quotes.
    """
    body = message.get("body")
    properties = message.get("properties")
    if not (
        isinstance(body, str)
        and isinstance(properties, dict)
        and properties.get("body_encoding") == "base64"
    ):
        return str(dumps(message))
    rest = str(dumps({"body": "", **{k: v for k, v in message.items() if k != "body"}}))
    if not rest.startswith(_BODY_FIRST):  # pragma: no cover - kombu's dumps changed shape
        return str(dumps(message))
    cut = len(_BODY_FIRST) - 1
    return rest[:cut] + body + rest[cut:]


class QoS(kombu_redis.QoS):
    """Records a message as unacknowledged and takes it off the in-flight list atomically;
    the periodic sweep also gives back what dead consumers left in flight."""

    channel: Channel

    def append(self, message: Any, delivery_tag: Any) -> None:
        taken = self.channel.take_inflight()
        if taken is None:
            super().append(message, delivery_tag)
            return
        inflight, raw = taken
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            pipe.lrem(inflight, 1, raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except self.channel.connection_errors:
            self._forget(delivery_tag)
            raise

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except self.channel.connection_errors:
            self._forget(delivery_tag)
            raise

    def _forget(self, delivery_tag: Any) -> None:
        """An ack or reject that could not reach the broker: the message stays in
        ``unacked`` (it comes back after the visibility timeout, a duplicate the versioned
        writes absorb), but this channel forgets it anyway. kombu's QoS keeps it otherwise:
        with the prefetch limit reached the channel never has credit again, its paused pop
        socket is never read, and the worker never notices that the broker went away (it
        waits forever, even after the broker is back)."""
        virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        super().restore_visible(start, num, interval)
        self.channel.renew_lease()
        self.channel.recover_inflight()


class Channel(kombu_redis.Channel):
    """A Redis channel that pops with ``BLMOVE`` into its own in-flight list."""

    QoS = QoS
    from_transport_options = kombu_redis.Channel.from_transport_options + _OWN_OPTIONS
    #: Replicas that must hold a pushed message before the publish returns (0: none).
    replica_acks: int = 0
    #: Seconds one push waits for them.
    replica_ack_timeout: float = 1.0

    if TYPE_CHECKING:  # kombu internals the stubs leave out
        _queue_cycle: Any
        _in_poll: Any
        _brpop_sent_at: float | None
        brpop_timeout: int
        connection_errors: tuple[type[BaseException], ...]

        def _q_for_pri(self, queue: str, pri: int) -> str: ...
        def _create_client(self, asynchronous: bool = False) -> Any: ...
        def _flush_brpop_reauth(self) -> None: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflight_id = uuid.uuid4().hex
        self._moving: tuple[str, str] | None = None  # (queue, in-flight list) of a BLMOVE
        self._pending: tuple[str, bytes] | None = None  # popped, not yet recorded
        self._leases: dict[str, float] = {}  # in-flight list -> when its lease was renewed
        self._shared_client: Any = None  # see conn_or_acquire

    # -- the in-flight list ---------------------------------------------------------------
    @property
    def lease_seconds(self) -> float:
        """How long the in-flight lists outlive this channel if it dies."""
        return max(float(self.visibility_timeout), _MIN_LEASE)

    def inflight_key(self, queue_key: str) -> str:
        """This channel's in-flight list for ``queue_key``."""
        return f"{INFLIGHT_PREFIX}{self._inflight_id}/{queue_key}"

    def take_inflight(self) -> tuple[str, bytes] | None:
        """The (in-flight list, raw message) being delivered, once; None if there is none."""
        pending, self._pending = self._pending, None
        return pending

    def renew_lease(self, inflight: str | None = None) -> None:
        """Keep this channel's in-flight lists (or just ``inflight``) marked alive."""
        now = time.monotonic()
        keys = [inflight] if inflight is not None else list(self._leases)
        due = [k for k in keys if now - self._leases.get(k, -1e9) > self.lease_seconds / 3]
        if not due:
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            for key in due:
                pipe.hset(INFLIGHT_REGISTRY, key, self._moving_queue_key(key))
                pipe.set(f"{key}:alive", b"1", px=int(self.lease_seconds * 1000))
            pipe.execute()
        for key in due:
            self._leases[key] = now

    def _moving_queue_key(self, inflight: str) -> str:
        return inflight[len(INFLIGHT_PREFIX) + len(self._inflight_id) + 1 :]

    def recover_inflight(self) -> int:
        """Give back what consumers whose lease expired left in flight; returns how many."""
        with self.conn_or_acquire() as client:
            restored = int(client.register_script(_RECOVER)(keys=[INFLIGHT_REGISTRY]))
        if restored:
            logger.warning("gave back %d message(s) a dead consumer had taken", restored)
        return restored

    # -- the broker connection ------------------------------------------------------------
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """``client``, else this channel's synchronous client on its connection pool.

        kombu builds a new ``redis.Redis`` for every operation (every publish): some 170
        response callbacks copied into a fresh dict, a good part of a publish's CPU. A
        client over a pool holds no connection of its own (each command takes one from the
        pool and gives it back), and redis-py clients are safe to share between threads,
        so one serves every operation until the channel gets a new pool (after a
        disconnect or a close).
        """
        if client is not None:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        # kombu's Connection.collect() detaches the transport (transport.client = None) even
        # when a channel's close failed half-way (reading the outstanding BLMOVE reply from
        # the dead broker). The retried close (restore_unacked_once) or a late ack then
        # builds a new pool, and kombu raises AttributeError ('NoneType' ... 'hostname'),
        # which ends the worker. A detached channel has no broker: say so with an error
        # kombu and Celery already handle.
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        return params

    # -- publishing -----------------------------------------------------------------------
    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        """kombu's ``_put`` (``LPUSH`` of the JSON envelope), the envelope encoded by
        :func:`envelope_json`. Queues with an expiry and batched publishes take kombu's
        own path (so does a kombu whose channel keeps expiries elsewhere)."""
        expires = self.__dict__.get("_expires")
        if kwargs.get("_publish_batch") is not None or expires is None or queue in expires:
            super()._put(queue, message, **kwargs)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        body = envelope_json(message)
        with self.conn_or_acquire() as client:
            if not self.replica_acks:
                client.lpush(key, body)
                return
            pipe = client.pipeline(transaction=False)
            pipe.lpush(key, body)
            pipe.wait(self.replica_acks, max(1, int(self.replica_ack_timeout * 1000)))
            acks = int(pipe.execute()[1])
        if acks < self.replica_acks:
            raise ReplicaAcksShort(acks, self.replica_acks)

    # -- consuming ------------------------------------------------------------------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix:  # BLMOVE is not among the commands kombu prefixes
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]  # BLMOVE takes one list; the cycle rotates after each pop
        source = self._q_for_pri(queue, 0)
        inflight = self.inflight_key(source)
        self.renew_lease(inflight)
        self._moving = (queue, inflight)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(
            "BLMOVE", source, inflight, "RIGHT", "LEFT", timeout or 0
        )

    def _brpop_read(self, **options: Any) -> bool:
        moving, self._moving = self._moving, None
        if moving is None:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        queue, inflight = moving
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            self._queue_cycle.rotate(queue)
            if not item:
                raise Empty()
            raw = item if isinstance(item, bytes) else str(item).encode()
            payload, problem = parse_entry(raw)
            if problem is not None:
                self._set_aside(inflight, raw, queue, problem)
                return True
            self._pending = (inflight, raw)
            try:
                self.connection._deliver(payload, queue)
            finally:
                if self.take_inflight() is not None:
                    # Delivered without being recorded (no-ack consumer, or handed back):
                    # it is no longer ours to keep.
                    with self.conn_or_acquire() as client:
                        client.lrem(inflight, 1, raw)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    # -- entries that are not kombu envelopes ---------------------------------------------
    def _set_aside(self, inflight: str, raw: bytes, queue: str, reason: str) -> None:
        """Move an undeliverable entry out of flight into its queue's unparsable list
        (atomically), then hand what that list holds to the hook."""
        logger.error("queue %r: entry of %d bytes set aside: %s", queue, len(raw), reason)
        aside = f"{UNPARSABLE_PREFIX}{queue}"
        record = dumps(unparsable_record(raw, queue, reason))
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            pipe.lrem(inflight, 1, raw)
            pipe.lpush(aside, record)
            pipe.ltrim(aside, 0, UNPARSABLE_MAX - 1)
            pipe.execute()
        self.hand_over_unparsable(aside)

    def hand_over_unparsable(self, aside: str) -> int:
        """Give the records of ``aside`` to ``Transport.on_unparsable``, oldest first, each
        removed once the hook returned; stops at the first failure. Returns how many."""
        hook: UnparsableHook | None = getattr(self.connection, "on_unparsable", None)
        if hook is None:
            return 0
        handed = 0
        with self.conn_or_acquire() as client:
            for _ in range(_HAND_OVER_BATCH):
                record = client.lindex(aside, -1)
                if record is None:
                    break
                try:
                    hook(loads(record))
                except Exception:
                    logger.exception("could not hand over an unparsable entry; kept in %r", aside)
                    break
                client.lrem(aside, -1, record)
                handed += 1
        return handed

    def close(self) -> None:
        leases = list(self._leases)
        super().close()
        if leases:
            self._release(leases)

    def _release(self, leases: list[str]) -> None:
        """A clean close: drop the leases of empty lists now (the rest expire and the
        sweep gives their messages back)."""
        # AttributeError: kombu detaches a closed connection's transport (client None).
        gone: tuple[type[BaseException], ...] = (*self.connection_errors, AttributeError)
        try:
            with self.conn_or_acquire() as client:
                for key in leases:
                    if not client.llen(key):
                        pipe = client.pipeline()
                        pipe.hdel(INFLIGHT_REGISTRY, key)
                        pipe.delete(f"{key}:alive")
                        pipe.execute()
        except gone:
            pass  # the leases expire on their own and the sweep tidies up


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`.

    ``on_unparsable``: called with the record of each queue entry that was not a kombu
    envelope (see the module docstring); the worker's consumer sets it.
    """

    Channel = Channel
    on_unparsable: UnparsableHook | None = None


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` on the primary that Redis Sentinel names (kombu's
    ``SentinelChannel``: the pool asks the sentinels, and follows a failover at the next
    connection); the in-flight list, the set-aside entries and the replica acks as on a
    single server.

    The sentinels come from the transport option ``sentinels`` (``[[host, port], ...]``),
    not from ``;``-joined URLs as in kombu: a kombu connection with several URLs fails over
    by re-reading the next URL, scheme included, and would carry on with kombu's own
    transport (no in-flight list, no replica acks) after its first connection error.
    """

    from_transport_options = (
        *kombu_redis.SentinelChannel.from_transport_options,
        *_OWN_OPTIONS,
        "sentinels",
    )
    #: Every sentinel's (host, port); empty: the URL's host alone.
    sentinels: list[tuple[str, int]] | tuple[()] = ()

    if TYPE_CHECKING:  # kombu internals the stubs leave out
        master_name: str | None
        min_other_sentinels: int
        sentinel_kwargs: dict[str, Any] | None
        _sentinel_manager: Any
        _async_sentinel_manager: Any

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        """kombu's pool on the primary the sentinels name, the sentinels from
        :attr:`sentinels`."""
        params: dict[str, Any] = dict(self._connparams(asynchronous))
        fallback = (params.pop("host", None), params.pop("port", None))
        nodes = [(str(h), int(p)) for h, p in self.sentinels] or [fallback]
        manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        if asynchronous:  # kept so that kombu closes its sentinel connections too
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError("'master_name' transport option must be specified.")
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        primary = manager.master_for(master_name, redis.Redis, **credentials)  # type: ignore[no-untyped-call]
        return primary.connection_pool


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel` (``sentinel://`` URLs, one per
    sentinel joined by ``;``; ``master_name`` in the transport options)."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
