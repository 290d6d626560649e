"""The one exception tree of agents-persistence.

::

    PersistenceError                 every error this package raises on purpose
    ├── InvalidInput                 the caller's fault; nothing was written or enqueued
    │   ├── InvalidThreadId          empty, whitespace only, control characters, too long
    │   ├── InvalidVersion           not an integer in 1 .. 2**63-1
    │   └── InvalidSnapshot          not a valid snapshot (types, status, NaN, nesting)
    │       └── SnapshotTooLarge     encoded JSON above the configured cap
    ├── CorruptState                 stored bytes for one thread cannot be decoded
    ├── StoreUnavailable             the store stayed unreachable through every retry
    │   ├── StoreFull                it answered OOM (maxmemory under noeviction): transient,
    │   │                            memory frees as keys expire or are deleted
    │   └── ReplicaAcksMissing       fewer replicas than ``replica_acks`` acknowledged a write
    ├── StoreMisconfigured           a key the namespace needs holds another Redis type, or
    │   │                            scripts cannot be loaded: no retry fixes it, an operator must
    │   └── LegacyLayout             a namespace of the single-index layout met on a Redis Cluster
    └── HandOffError                 a snapshot could not be handed to the broker
        ├── FlushTimeout             flush() / wait() ran out of time; names what is pending
        └── BrokerMisconfigured      the broker refuses the queue's declaration (a classic
                                     queue met with queue_type quorum, ...): no retry fixes it

Each error raised because of another one is chained to it (``raise ... from exc``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BrokerMisconfigured",
    "CorruptState",
    "FlushTimeout",
    "HandOffError",
    "InvalidInput",
    "InvalidSnapshot",
    "InvalidThreadId",
    "InvalidVersion",
    "LegacyLayout",
    "PersistenceError",
    "ReplicaAcksMissing",
    "SnapshotTooLarge",
    "StoreFull",
    "StoreMisconfigured",
    "StoreUnavailable",
]


class PersistenceError(Exception):
    """Root of every error agents-persistence raises on purpose."""


class InvalidInput(PersistenceError, ValueError):
    """The caller passed something unusable; nothing was written or enqueued."""


class InvalidThreadId(InvalidInput):
    """A thread id that is empty, whitespace only, not a string, too long or has control
    characters."""


class InvalidVersion(InvalidInput):
    """A version that is not an integer between 1 and 2**63 - 1."""


class InvalidSnapshot(InvalidInput):
    """A snapshot that does not validate or cannot be encoded as JSON."""


class SnapshotTooLarge(InvalidSnapshot):
    """A snapshot whose encoded JSON is above the configured cap."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"snapshot is {size} bytes of JSON, above the limit of {limit}")
        self.size = size
        self.limit = limit


class CorruptState(PersistenceError):
    """The bytes stored for one thread cannot be decoded; other threads are unaffected."""

    def __init__(self, thread_id: str, reason: str) -> None:
        super().__init__(f"stored state of thread {thread_id!r} is corrupt: {reason}")
        self.thread_id = thread_id
        self.reason = reason


class StoreUnavailable(PersistenceError):
    """The store could not be reached through the whole retry policy."""


class StoreFull(StoreUnavailable):
    """The store refused a write for lack of memory (``OOM`` under ``noeviction``).

    A kind of :class:`StoreUnavailable`: it clears once memory frees up, so callers treat
    it as an outage (retry later; the worker gives the message back). It is raised at
    once, without the retry policy's quick retries, which could not help.
    """


class ReplicaAcksMissing(StoreUnavailable):
    """A write was applied by the primary, but fewer replicas than required acknowledged it
    within the timeout (``WAIT``), through every retry: it is not durable against a failover
    (it may be lost if the primary fails now). Retry later; nothing older was written over.

    Attributes:
        acks: replicas that acknowledged the last attempt.
        required: replicas required (``replica_acks``).
    """

    def __init__(self, acks: int, required: int) -> None:
        super().__init__(
            f"only {acks} of the {required} required replica(s) acknowledged the write "
            "(WAIT), through every retry: not durable"
        )
        self.acks, self.required = acks, required


class StoreMisconfigured(PersistenceError):
    """The store answered, but refuses what the namespace needs for a reason that no retry
    fixes: a key of the namespace (the dead-letter list, the index) holds a value of
    another Redis type (``WRONGTYPE``), or scripts cannot be loaded. An operator must act.

    Attributes:
        key: the key concerned ("" if none).
        reason: what is wrong, without any value.
    """

    def __init__(self, key: str, reason: str) -> None:
        where = f" at {key!r}" if key else ""
        super().__init__(f"store misconfigured{where}: {reason}")
        self.key = key
        self.reason = reason


class LegacyLayout(StoreMisconfigured):
    """The namespace keeps the single-index layout of earlier releases (one ``ns:index``,
    records at ``ns:thread:<id>``), which a Redis Cluster cannot serve: its keys live in
    unrelated slots. Migrate the namespace to the sharded layout on the single server that
    holds it (``agents-persistence migrate``, online:
    :func:`~agents_persistence.migrate.migrate_namespace`) and copy it to the cluster, or
    use another namespace there. On a single server the layout keeps working as it is."""

    def __init__(self, key: str) -> None:
        super().__init__(
            key,
            "the namespace uses the single-index layout of earlier releases, which a Redis "
            "Cluster cannot serve; migrate it to the sharded layout on one server "
            "(agents-persistence migrate; docs/scaling.md)",
        )


class HandOffError(PersistenceError):
    """A snapshot could not be handed to the broker; the caller still holds its state."""


class FlushTimeout(HandOffError, TimeoutError):
    """Waiting for hand-offs to become durable ran out of time."""

    def __init__(self, pending: Sequence[tuple[str, int]], timeout: float | None) -> None:
        shown = ", ".join(f"{tid!r}@{ver}" for tid, ver in list(pending)[:10])
        more = f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        super().__init__(f"{len(pending)} hand-off(s) not durable after {timeout}s: {shown}{more}")
        self.pending = list(pending)
        self.timeout = timeout


class BrokerMisconfigured(HandOffError):
    """The broker refuses to declare the hand-off queue as the settings describe it (RabbitMQ
    ``PRECONDITION_FAILED``: the queue, or its exchange, exists with another type or other
    arguments, typically a classic queue met with ``queue_type = "quorum"``). No retry fixes
    it: nothing was enqueued, the caller still holds its state, an operator must act.

    Attributes:
        queue: the hand-off queue.
        reason: what the broker said, and how to fix it.
    """

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(f"broker misconfigured for queue {queue!r}: {reason}")
        self.queue = queue
        self.reason = reason
