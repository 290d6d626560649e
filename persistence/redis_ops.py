"""The Redis store's logic without its I/O: what to send, and what the replies mean.

:class:`~agents_persistence.redis_store.RedisCheckpointer` (redis-py's blocking client) and
:class:`~agents_persistence.async_store.AsyncRedisCheckpointer` (its asyncio client) run the
same operations and differ only in how a request reaches the server. Each operation is a
generator (sans-I/O): it yields a :class:`Command` or a :class:`Pipeline` and is sent the
reply, or thrown the error, by the store's driver through an :class:`Exchange`. So the
compare-and-set arguments, the per-save outcomes, the NOSCRIPT fallback, record decoding,
the listing cursor and the cleanup loop are written once; a driver sends each request
through the store's retry policy (a request is idempotent: a pipeline is resent whole).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any, Generic, NoReturn, TypeVar, cast

import redis.exceptions as rex
from agents_persistence.base import MAX_PAGE_SIZE, check_limit, check_page_size
from agents_persistence.checkpoint import Checkpoint, PreparedSave, WriteOutcome, WriteResult
from agents_persistence.codec import (
    HEADER_SIZE,
    MAGIC,
    VERSION_END,
    VERSION_START,
    Codec,
    Record,
    format_version,
)
from agents_persistence.errors import (
    CorruptState,
    InvalidInput,
    LegacyLayout,
    ReplicaAcksMissing,
    StoreMisconfigured,
    StoreUnavailable,
)
from agents_persistence.keys import (
    DEFAULT_SHARDS,
    SINGLE,
    Keys,
    layout_value,
    migrating_value,
    parse_layout,
    parse_migrating,
)
from agents_persistence.scripts import LuaScript, lua
from agents_persistence.validation import MAX_VERSION, check_thread_id, check_version

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_SAVES",
    "INLINE_MAX_BYTES",
    "LARGE_RECORD_BYTES",
    "AcksMissing",
    "Asked",
    "Command",
    "Exchange",
    "Op",
    "Pages",
    "Pipeline",
    "RedisOps",
    "Request",
    "SlotMoved",
    "Sweep",
    "first_key",
    "follow_ask",
    "waited",
    "waited_commands",
]

#: Records up to this size go to the script as an argument (one EVALSHA); larger ones are
#: staged with SET inside MULTI/EXEC and RENAMEd, because copying a large argument into Lua
#: costs more than the extra commands (measured: bench/, P3).
INLINE_MAX_BYTES = 32 * 1024
#: Most saves, and most record bytes, in one MULTI/EXEC of a ``save_many``. One EXEC holds
#: Redis for all of its commands: a 30,000-save batch in one held every other client
#: ~0.3-1.4 s here; chunks of 500 hold it a few ms each (docs/bad-input.md).
CHUNK_SAVES = 500
CHUNK_BYTES = 8 * 1024 * 1024
#: Loads of a thread whose last record had at least this many bytes read header and body
#: apart (``MULTI; GETRANGE 0 39; GETRANGE 40 -1; EXEC``), so the body needs no copy to
#: drop the header: a second MB-sized allocation that may fault every page in afresh.
LARGE_RECORD_BYTES = 256 * 1024
#: How many such threads are remembered (oldest forgotten first).
_LARGE_HINTS = 4096
#: A staged record only outlives its transaction if the script failed; it then expires.
_STAGING_PX = 60_000
#: Errors in a pipeline's replies that concern the whole request, not one command: among
#: them a cluster's TRYAGAIN, a script's keys split between two nodes while their slot
#: migrates (resent whole once the slot has moved; a resent save is a DUPLICATE).
_WHOLE_REQUEST_ERRORS = (
    rex.NoScriptError,
    rex.ConnectionError,
    rex.TimeoutError,
    rex.OutOfMemoryError,
    rex.TryAgainError,
)
_OUTCOMES = (WriteOutcome.WRITTEN, WriteOutcome.DUPLICATE, WriteOutcome.STALE)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command (``execute_command(*args)``)."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands sent in one round trip, as a MULTI/EXEC transaction if ``transaction``.

    With ``raise_on_error`` off, a command's error comes back in its slot of the reply;
    :meth:`check` still raises the errors that concern the whole request.
    """

    commands: tuple[tuple[Any, ...], ...]
    transaction: bool = False
    raise_on_error: bool = True
    #: ``(replicas, timeout ms)``: send ``WAIT`` after the commands (after ``EXEC``) in the
    #: same round trip, on the same connection (see :func:`waited`).
    wait: tuple[int, int] | None = None

    @staticmethod
    def check(replies: list[Any]) -> list[Any]:
        """Raise a lost script (the fallback's cue), a dropped connection, a TRYAGAIN (the
        retry policy's) or an OOM (StoreFull) found among ``replies``; return them
        otherwise."""
        for reply in replies:
            # A failed transaction only left the staging key behind; a rerun overwrites it.
            if isinstance(reply, _WHOLE_REQUEST_ERRORS):
                raise reply
        return replies


Request = Command | Pipeline


class AcksMissing(rex.TryAgainError):
    """Fewer replicas than required acknowledged a write (``WAIT``): retried as a
    transient error (the write is resent whole, so a failover that lost it is repaired);
    after the last retry the operation raises
    :class:`~agents_persistence.errors.ReplicaAcksMissing`."""

    def __init__(self, acks: int, required: int) -> None:
        super().__init__(f"{acks} of {required} replica(s) acknowledged the write")
        self.acks, self.required = acks, required


class SlotMoved(rex.TryAgainError):
    """A command sent to the node that held its slot was answered MOVED/ASK/CLUSTERDOWN:
    the driver refreshes its slot map and the request is retried."""


def waited_commands(request: Pipeline) -> list[tuple[Any, ...]]:
    """What a driver sends for ``request`` in one non-transactional pipeline on one
    connection (a node's, on a cluster): ``[MULTI,] commands [, EXEC] [, WAIT replicas
    timeout]``."""
    commands = list(request.commands)
    if request.transaction:
        commands = [("MULTI",), *commands, ("EXEC",)]
    if request.wait is not None:
        commands.append(("WAIT", *request.wait))
    return commands


def waited(request: Pipeline, replies: list[Any]) -> list[Any]:
    """The replies to ``request``'s commands, from the replies to
    :func:`waited_commands`; raises what :meth:`Pipeline.check` raises, the first error with
    ``raise_on_error``, :class:`SlotMoved`, or :class:`AcksMissing` if ``WAIT`` counted
    fewer replicas than required."""
    if any(isinstance(r, (rex.MovedError, rex.AskError, rex.ClusterDownError)) for r in replies):
        raise SlotMoved("the slot moved to another node")
    replies = list(replies)
    acks: Any = replies.pop() if request.wait is not None else None
    if request.transaction:
        results = replies[-1]
        if isinstance(results, Exception):  # EXECABORT: a command was refused when queued
            errors = [r for r in replies[1:-1] if isinstance(r, Exception)]
            raise errors[0] if errors else results
        results = list(results)
    else:
        results = replies
    Pipeline.check(results)
    if request.raise_on_error:
        for reply in results:
            if isinstance(reply, Exception):
                raise reply
    if request.wait is not None:
        if isinstance(acks, Exception):
            raise acks
        if int(acks) < request.wait[0]:
            raise AcksMissing(int(acks), request.wait[0])
    return results


@dataclass(frozen=True, slots=True)
class Asked:
    """Commands of a request that their node answered ``ASK`` (their slot is migrating and
    their keys have left it), to be sent to the importing node, each after ``ASKING``;
    :meth:`merge` puts that node's replies in their place. See :func:`follow_ask`."""

    host: str
    port: int
    request: Pipeline
    #: Where each resent command's reply goes in the first node's replies.
    positions: tuple[int, ...]
    #: What to send on the importing node's connection.
    commands: tuple[tuple[Any, ...], ...]

    def merge(self, first: list[Any], replies: list[Any]) -> list[Any]:
        """The replies to :func:`waited_commands` of :attr:`request`: ``first`` (the first
        node's) with the importing node's ``replies`` (to :attr:`commands`) in place of the
        ``ASK`` answers, and ``WAIT`` counting the fewer acknowledgements of the two."""
        if self.request.transaction:  # sent whole: its replies after ASKING's
            return replies[1:]
        merged = list(first)
        answers = replies[1 : 2 * len(self.positions) : 2]  # [ASKING, command]... [WAIT]
        for at, reply in zip(self.positions, answers, strict=True):
            merged[at] = reply
        if self.request.wait is not None:
            acks = replies[-1]
            if isinstance(acks, Exception) or isinstance(merged[-1], Exception):
                merged[-1] = acks if isinstance(acks, Exception) else merged[-1]
            else:
                merged[-1] = min(int(acks), int(merged[-1]))
        return merged


def follow_ask(request: Pipeline, replies: list[Any]) -> Asked | None:
    """What to resend, and where, after a node answered ``ASK`` to some of ``request``'s
    commands (sent as :func:`waited_commands`); None if none was answered so.

    A node answers ``ASK`` to a command whose keys are all gone from its migrating slot, so
    the importing node serves it after ``ASKING`` (a multi-key command whose keys are split
    between the two gets ``TRYAGAIN`` there: retried). A transaction is resent whole only if
    its node refused it whole (every command, or ``EXEC``): a part of it served from each
    node would not be one transaction. Otherwise, and when the commands were sent to two
    importing nodes, :class:`SlotMoved` is raised: retried once the slots have moved.
    """
    asks = [r for r in replies if isinstance(r, rex.AskError)]
    if not asks:
        return None
    targets = {(a.host, a.port) for a in asks}
    if len(targets) > 1 or any(
        isinstance(r, (rex.MovedError, rex.ClusterDownError)) for r in replies
    ):
        raise SlotMoved("the request's slots are moving")
    ((host, port),) = targets
    n = len(request.commands)
    if request.transaction:
        queued, exec_reply = replies[1 : 1 + n], replies[1 + n]
        if not (
            isinstance(exec_reply, rex.AskError)
            or all(isinstance(r, rex.AskError) for r in queued)
        ):
            raise SlotMoved("a transaction's keys are on both sides of a migrating slot")
        commands = (("ASKING",), *waited_commands(request))
        return Asked(host, port, request, tuple(range(n)), commands)
    positions = tuple(i for i in range(n) if isinstance(replies[i], rex.AskError))
    resent: list[tuple[Any, ...]] = []
    for i in positions:
        resent += [("ASKING",), request.commands[i]]
    if request.wait is not None:
        resent.append(("WAIT", *request.wait))
    return Asked(host, port, request, positions, tuple(resent))


def by_node(
    request: Pipeline, node_of: Callable[[bytes | str], T]
) -> list[tuple[T, Pipeline, list[int]]]:
    """``request`` split into one request per cluster node (``node_of(key)``, by each
    command's first key), with the positions of its commands in ``request``; a
    transaction is one slot, hence one node, and stays whole."""
    if request.transaction:
        return [(node_of(first_key(request)), request, list(range(len(request.commands))))]
    groups: dict[str, tuple[T, list[int]]] = {}
    for i, args in enumerate(request.commands):
        node = node_of(first_key(Command(args)))
        groups.setdefault(str(getattr(node, "name", id(node))), (node, []))[1].append(i)
    if len(groups) == 1:
        ((node, where),) = groups.values()
        return [(node, request, where)]
    return [
        (node, replace(request, commands=tuple(request.commands[i] for i in where)), where)
        for node, where in groups.values()
    ]


def first_key(request: Request) -> bytes | str:
    """The first key ``request`` names (the slot every key of a waited request shares)."""
    commands = request.commands if isinstance(request, Pipeline) else (request.args,)
    for args in commands:
        name = str(args[0]).upper()
        if name in ("EVALSHA", "EVAL") and int(args[2]) > 0:
            return cast(bytes | str, args[3])
        if name not in ("EVALSHA", "EVAL", "TIME", "PING", "SCRIPT LOAD", "WAIT"):
            return cast(bytes | str, args[1])
    raise ValueError("the request names no key")


#: An operation: yields requests, is sent their replies, returns its result.
Op = Generator[Request, Any, T]


class Exchange(Generic[T]):
    """Runs an :data:`Op` for a driver: iterate it for the requests to send, and hand each
    one's reply to :meth:`reply` or its error to :meth:`fail`; then read :attr:`result`.

    An error the operation does not handle leaves the loop (raised from ``next``).
    """

    __slots__ = ("_error", "_op", "_reply", "result")

    result: T

    def __init__(self, op: Op[T]) -> None:
        self._op = op
        self._reply: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._op.throw(error)
            reply, self._reply = self._reply, None
            return self._op.send(reply)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None

    def reply(self, reply: Any) -> None:
        """The answer to the request last yielded."""
        self._reply = reply

    def fail(self, error: Exception) -> None:
        """The error the request last yielded ended in (raised inside the operation)."""
        self._error = error


class RedisOps:
    """The operations of one store: its keys, codec, TTLs and remembered large threads.

    The namespace's layout (:mod:`agents_persistence.keys`) is read from Redis, or recorded
    there, by :meth:`resolve`, which a driver runs before the first operation; until then
    :attr:`keys` assumes the sharded layout of new namespaces.

    Both layouts during a migration (``migrating:<S>``, one server only): :attr:`keys` is the
    sharded layout and :attr:`old` the single one; each write first moves its thread into
    the sharded layout (``move.lua``) in the same transaction, a load reads both keys in one
    transaction (a thread is only ever in one of them), listings merge the indexes of both.
    A store still in the single layout notices the migration on its next request: its writes
    are refused by the scripts (``LAYOUTMOVED``: nothing written; the layout is read again
    and the write resent), its loads and listing pages read the layout key in the same
    transaction.

    Args:
        keys: the namespace's keys.
        codec: record encoding.
        ttl_ms: lifetime of a thread's state after each save, or None.
        tombstone_ttl_ms: lifetime of a delete's tombstone.
        cluster: the client is a Redis Cluster client: one request never mixes slots.
        shards: index shards of a namespace this store creates.
        replica_acks: a write counts only once this many replicas acknowledged it (``WAIT``
            in the same round trip); 0: don't wait.
        replica_ack_timeout_ms: how long ``WAIT`` waits for them.
    """

    def __init__(
        self,
        keys: Keys,
        codec: Codec,
        ttl_ms: int | None,
        tombstone_ttl_ms: int,
        *,
        cluster: bool = False,
        shards: int = DEFAULT_SHARDS,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 1000,
    ):
        self.keys = keys if keys.shards == shards else keys.with_shards(shards)
        self.codec = codec
        self.cluster, self._new_shards = cluster, shards
        self.resolved = False
        #: The single-index layout's keys while a migration is under way, else None.
        self.old: Keys | None = None
        self._migrating = b""  # the layout value of that migration
        self._unrecorded: bytes | None = None  # the layout chosen, until a write records it
        self.acks = (replica_acks, replica_ack_timeout_ms) if replica_acks > 0 else None
        self.tombstone_ttl_ms = tombstone_ttl_ms
        self._ttl_arg = b"" if ttl_ms is None else str(ttl_ms).encode()
        self._save, self._delete = lua("save"), lua("delete")
        self._page, self._cleanup = lua("page"), lua("cleanup")
        self._move = lua("move")
        self._large: dict[str, None] = {}  # threads whose records were large: read split

    # -- layout -------------------------------------------------------------------------------
    def resolve(self) -> Op[Keys]:
        """Read the namespace's layout and set :attr:`keys`. A namespace without a layout key
        gets the single index if keys of earlier releases (``ns:index``) or of the Rust crate
        (``ns:threads``) are there, else the sharded layout; its first write records that
        (reads never write).

        Raises:
            StoreMisconfigured: the layout key names a layout this release does not know.
            LegacyLayout: the single-index layout, on a Redis Cluster.
        """
        keys = self.keys
        raw = yield Command(("GET", keys.layout))
        if raw is None:
            old, crate = yield Pipeline((("EXISTS", keys.index), ("EXISTS", keys.crate_index)))
            self._unrecorded = layout_value(SINGLE if old or crate else self._new_shards)
            raw = self._unrecorded
        self._apply_layout(raw)
        self.resolved = True
        return self.keys

    def _record_layout(self) -> Op[None]:
        """Before the first write: record the layout :meth:`resolve` chose, unless another
        process recorded one first (then use that)."""
        if self._unrecorded is None:
            return
        value, layout = self._unrecorded, self.keys.layout
        _, raw = yield Pipeline((("SET", layout, value, "NX"), ("GET", layout)))
        self._unrecorded = None
        self._apply_layout(raw if raw is not None else value)

    def _apply_layout(self, raw: bytes | str) -> None:
        target = parse_migrating(raw)
        if target is not None:
            if self.cluster:
                raise LegacyLayout(self.keys.layout)
            self.old, self._migrating = self.keys.with_shards(SINGLE), migrating_value(target)
            if target != self.keys.shards:
                self.keys = self.keys.with_shards(target)
            return
        self.old = None
        shards = parse_layout(raw)
        if shards is None:
            raise StoreMisconfigured(
                self.keys.layout, "it names a layout this release does not know"
            )
        if shards == SINGLE and self.cluster:
            raise LegacyLayout(self.keys.layout)
        if shards != self.keys.shards:
            self.keys = self.keys.with_shards(shards)

    @property
    def listed_index_keys(self) -> tuple[str, ...]:
        """The index keys listings, counts and cleanup walk (both layouts' while migrating)."""
        if self.old is None:
            return self.keys.index_keys
        return (*self.keys.index_keys, self.old.index)

    def _move_args(self, thread_id: str) -> tuple[Any, ...]:
        """``move.lua`` of ``thread_id`` (only while migrating)."""
        old, keys = cast(Keys, self.old), self.keys
        return (
            "EVALSHA", self._move.sha, 6,
            old.thread(thread_id), old.index, old.crate_index,
            keys.thread(thread_id), keys.index_of(keys.shard(thread_id)), keys.layout,
            thread_id, self._migrating,
        )  # fmt: skip

    def _moved(self, reply: Any) -> None:
        """After ``move.lua``: if the migration has ended meanwhile (its layout value is
        gone), read the layout again before the next operation."""
        if isinstance(reply, list) and reply and int(reply[0]) < 0:
            self.resolved = False

    # -- writes -------------------------------------------------------------------------------
    def save_many(self, saves: Sequence[PreparedSave]) -> Op[list[WriteResult | Exception]]:
        """Each save's compare-and-set, in transactions of at most :data:`CHUNK_SAVES` saves
        and :data:`CHUNK_BYTES` bytes (one request each, so each has its own retries): its
        result, or the typed error that concerns only it (a header that cannot be written:
        not sent)."""
        results: list[WriteResult | Exception | None] = [None] * len(saves)
        chunk: list[tuple[int, PreparedSave, bytes]] = []
        size = 0
        for i, s in enumerate(saves):
            try:
                record = self.codec.pack(s.body, s.version, s.saved_at_ms)
            except InvalidInput as exc:
                results[i] = exc
                continue
            if chunk and (len(chunk) >= CHUNK_SAVES or size + len(record) > CHUNK_BYTES):
                yield from self._save_chunk(chunk, results)
                chunk, size = [], 0
            chunk.append((i, s, record))
            size += len(record)
        if chunk:
            yield from self._save_chunk(chunk, results)
        return [r for r in results if r is not None]

    def _save_chunk(
        self,
        chunk: list[tuple[int, PreparedSave, bytes]],
        results: list[WriteResult | Exception | None],
    ) -> Op[None]:
        yield from self._record_layout()
        yield from self._save_chunk_once(chunk, results)
        moved = [
            item
            for item in chunk
            if isinstance(results[item[0]], rex.ResponseError)
            and "LAYOUTMOVED" in str(results[item[0]])
        ]
        if moved:  # a migration began: read the layout again and resend these saves
            yield from self.resolve()
            yield from self._save_chunk_once(moved, results)

    def _save_chunk_once(
        self,
        chunk: list[tuple[int, PreparedSave, bytes]],
        results: list[WriteResult | Exception | None],
    ) -> Op[None]:
        migrating = self.old is not None
        if len(chunk) == 1 and len(chunk[0][2]) <= INLINE_MAX_BYTES and not migrating:
            i, s, record = chunk[0]
            try:
                request = self._write(self._cas(s, record))
                reply = yield from self._script(self._save, request)
                results[i] = _result(s, reply if isinstance(request, Command) else reply[0])
            except rex.ResponseError as exc:
                results[i] = _result(s, exc)
            return
        for group, transaction in self._save_groups(chunk):
            commands: list[tuple[Any, ...]] = []
            evals: list[int] = []
            moves: list[int] = []
            for _, s, record in group:
                if migrating:
                    moves.append(len(commands))
                    commands.append(self._move_args(s.thread_id))
                if len(record) <= INLINE_MAX_BYTES:
                    commands.append(self._cas(s, record))
                else:
                    staging = self.keys.staging_of(self.keys.shard(s.thread_id))
                    commands.append(("SET", staging, record, "PX", _STAGING_PX))
                    commands.append(self._cas(s, None))
                evals.append(len(commands) - 1)
            pipeline = Pipeline(
                tuple(commands), transaction=transaction, raise_on_error=False, wait=self.acks
            )
            replies = yield from self._script(self._save, pipeline)
            for at in moves:
                self._moved(replies[at])
            for (i, s, _), at in zip(group, evals, strict=True):
                results[i] = _result(s, replies[at])

    def _save_groups(
        self, chunk: list[tuple[int, PreparedSave, bytes]]
    ) -> list[tuple[list[tuple[int, PreparedSave, bytes]], bool]]:
        """The requests a chunk of saves travels in, each with whether it is a MULTI/EXEC.

        One server: the whole chunk in one transaction. A cluster: a transaction only spans
        one slot, so the small saves (one script each, atomic on its own) go in one
        pipeline that the client splits by node, and the staged large ones in one
        transaction per shard (the staging SET and the script must not be interleaved).
        """
        if not self.cluster:
            return [(chunk, True)]
        if self.acks is not None:  # WAIT runs on the connection of one node: one shard each
            shards: dict[int, list[tuple[int, PreparedSave, bytes]]] = {}
            for item in chunk:
                shards.setdefault(self.keys.shard(item[1].thread_id), []).append(item)
            return [
                (group, any(len(r) > INLINE_MAX_BYTES for _, _, r in group))
                for group in shards.values()
            ]
        small = [item for item in chunk if len(item[2]) <= INLINE_MAX_BYTES]
        by_shard: dict[int, list[tuple[int, PreparedSave, bytes]]] = {}
        for item in chunk:
            if len(item[2]) > INLINE_MAX_BYTES:
                by_shard.setdefault(self.keys.shard(item[1].thread_id), []).append(item)
        groups = [(small, False)] if small else []
        return groups + [(group, True) for group in by_shard.values()]

    def _cas(self, s: PreparedSave, record: bytes | None) -> tuple[Any, ...]:
        keys = self.keys
        shard = keys.shard(s.thread_id)
        # The single-index layout's scripts check the layout key (a migration may begin).
        guard = () if keys.sharded else (keys.layout,)
        args = (
            "EVALSHA", self._save.sha, 3 + len(guard),
            keys.thread(s.thread_id), keys.staging_of(shard), keys.index_of(shard), *guard,
            format_version(s.version), self._ttl_arg, s.thread_id,
        )  # fmt: skip
        return args if record is None else (*args, record)

    def delete(
        self, thread_id: str, version: int | None, clock: Callable[[], int]
    ) -> Op[WriteResult]:
        """Tombstone ``thread_id`` at ``version``, or above everything stored and above
        ``clock()`` (this process's versions) if None."""
        check_thread_id(thread_id)
        explicit = None if version is None else check_version(version)
        args = (
            b"" if explicit is None else format_version(explicit),
            self.tombstone_ttl_ms,
            thread_id,
            format_version(clock()),
        )
        yield from self._record_layout()
        try:
            code, current = yield from self._delete_once(thread_id, args)
        except rex.ResponseError as exc:
            if "LAYOUTMOVED" not in str(exc):
                raise
            yield from self.resolve()  # a migration began: resend in the layout it names
            code, current = yield from self._delete_once(thread_id, args)
        done = explicit if explicit is not None else int(current)
        return WriteResult(thread_id, done, _OUTCOMES[code], int(current))

    def _delete_once(self, thread_id: str, args: tuple[Any, ...]) -> Op[tuple[int, Any]]:
        keys = self.keys
        where = (keys.thread(thread_id), keys.index_of(keys.shard(thread_id)))
        if self.old is None:
            guard = () if keys.sharded else (keys.layout,)
            reply = yield from self._eval(
                self._delete, (*where, *guard), args, thread_id, write=True
            )
            return int(reply[0]), reply[1]
        delete = ("EVALSHA", self._delete.sha, 2, *where, *args)
        request = Pipeline(
            (self._move_args(thread_id), delete),
            transaction=True,
            raise_on_error=False,
            wait=self.acks,
        )
        replies = yield from self._script(self._delete, request)
        self._moved(replies[0])
        if isinstance(replies[1], Exception):
            _raise_typed(thread_id, replies[1])
        return int(replies[1][0]), replies[1][1]

    def sweep(self, limit: int | None) -> Sweep:
        """The cleanup of up to ``limit`` (None: all) expired index entries."""
        return Sweep(self, limit)

    # -- reads ----------------------------------------------------------------------------------
    def load(self, thread_id: str) -> Op[Checkpoint | None]:
        """The newest stored state of ``thread_id`` with its metadata, or None."""
        check_thread_id(thread_id)
        key = self.keys.thread(thread_id)
        if self.old is not None or not self.keys.sharded:
            return (yield from self._load_unsettled(thread_id))
        large = thread_id in self._large
        record: Record | None = None
        try:
            if large:
                split = ("GETRANGE", key, 0, HEADER_SIZE - 1), ("GETRANGE", key, HEADER_SIZE, -1)
                head, body = yield Pipeline(split, transaction=True)
                if head:
                    record = self._decode_split(thread_id, head, body)
                else:  # gone, or an empty value: forget the hint, read it as anyone would
                    self._large.pop(thread_id, None)
                    large = False
            if not large:
                record = self._decode(thread_id, (yield Command(("GET", key))))
        except rex.ResponseError as exc:
            _raise_typed(thread_id, exc)
        if record is None or record.state is None:
            return None
        return Checkpoint(thread_id, record.version, record.saved_at, record.state)

    def _load_unsettled(self, thread_id: str) -> Op[Checkpoint | None]:
        """:meth:`load` in the single-index layout (the layout key read in the same
        transaction: a migration may have begun) or during a migration (both keys read in one
        transaction; the thread is in one of them)."""
        try:
            if self.old is None:
                keys = self.keys
                raw_layout, raw = yield Pipeline(
                    (("GET", keys.layout), ("GET", keys.thread(thread_id))), transaction=True
                )
                if raw_layout is not None and parse_layout(raw_layout) != SINGLE:
                    self._apply_layout(raw_layout)  # a migration began
                    return (yield from self.load(thread_id))
            else:
                new, old = yield Pipeline(
                    (("GET", self.keys.thread(thread_id)), ("GET", self.old.thread(thread_id))),
                    transaction=True,
                )
                raw = new if new is not None else old
            record = self._decode(thread_id, raw)
        except rex.ResponseError as exc:
            _raise_typed(thread_id, exc)
        if record is None or record.state is None:
            return None
        return Checkpoint(thread_id, record.version, record.saved_at, record.state)

    def _decode(self, thread_id: str, raw: Any) -> Record | None:
        if raw is None:
            return None
        if isinstance(raw, str):  # a client built with decode_responses=True
            raw = raw.encode()
        if len(raw) >= LARGE_RECORD_BYTES:
            self._large[thread_id] = None
            if len(self._large) > _LARGE_HINTS:
                self._large.pop(next(iter(self._large)), None)
        return self.codec.unpack(thread_id, raw)

    def _decode_split(self, thread_id: str, head: Any, body: Any) -> Record:
        if isinstance(head, str):  # a client built with decode_responses=True
            head, body = head.encode(), body.encode()
        if len(head) + len(body) < LARGE_RECORD_BYTES:
            self._large.pop(thread_id, None)
        return self.codec.unpack_split(thread_id, head, body)

    def pages(self, page_size: int) -> Pages:
        """The live threads, a page per request (see :meth:`Pages.next_page`)."""
        return Pages(self, page_size)

    def stored_versions(self, thread_ids: Sequence[str]) -> Op[dict[str, int]]:
        """The version held for each thread (0: nothing), from the record headers."""
        if not thread_ids:
            return {}
        layouts = [self.keys] if self.old is None else [self.keys, self.old]
        single = not self.keys.sharded  # a migration may begin: read the layout key too
        heads = yield Pipeline(
            (
                *((("GET", self.keys.layout),) if single else ()),
                *(
                    ("GETRANGE", keys.thread(t), 0, VERSION_END - 1)
                    for t in thread_ids
                    for keys in layouts
                ),
            ),
            raise_on_error=False,
            transaction=self.old is not None or single,
        )
        if single:
            layout, *heads = heads
            if isinstance(layout, (bytes, str)) and parse_layout(layout) != SINGLE:
                self._apply_layout(layout)
                return (yield from self.stored_versions(thread_ids))
        n = len(layouts)
        return {
            tid: max(map(_header_version, heads[i * n : (i + 1) * n]))
            for i, tid in enumerate(thread_ids)
        }

    def count_threads(self) -> Op[tuple[int, int]]:
        """(live, expired but not yet cleaned) entries of the index, by the server's clock."""
        if self.keys.sharded:
            seconds, micros = yield Command(("TIME",))
        else:  # a migration may have begun: read the layout key too
            (seconds, micros), layout = yield Pipeline((("TIME",), ("GET", self.keys.layout)))
            if layout is not None and parse_layout(layout) != SINGLE:
                self._apply_layout(layout)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        commands: list[tuple[Any, ...]] = []
        for index in self.listed_index_keys:
            commands += [("ZCARD", index), ("ZCOUNT", index, "-inf", now_ms)]
        replies = yield Pipeline(tuple(commands))
        total, expired = sum(map(int, replies[::2])), sum(map(int, replies[1::2]))
        return total - expired, expired

    def ping(self) -> Op[None]:
        """One PING."""
        yield Command(("PING",))

    # -- scripts --------------------------------------------------------------------------------
    def _write(self, args: tuple[Any, ...]) -> Request:
        """One write command, followed by ``WAIT`` in the same round trip if replica acks
        are required (then its reply is a one-element list)."""
        if self.acks is None:
            return Command(args)
        return Pipeline((args,), wait=self.acks)

    def _script(self, script: LuaScript, request: Request) -> Op[Any]:
        """Send ``request``, which runs ``script`` by its SHA; if the server lost its scripts
        (restart, failover, SCRIPT FLUSH: NOSCRIPT), load ``script`` and send it once more.

        The one NOSCRIPT fallback of both stores: single calls and pipelines both go here.
        """
        try:
            try:
                return (yield request)
            except rex.NoScriptError:
                yield Command(("SCRIPT LOAD", script.source))
                if self.old is not None:  # during a migration, writes also run move.lua
                    yield Command(("SCRIPT LOAD", self._move.source))
            try:
                return (yield request)
            except rex.NoScriptError as exc:  # loaded, yet unknown: a proxy that drops scripts
                raise StoreMisconfigured(
                    "", f"script {script.name} cannot be kept loaded"
                ) from exc
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, AcksMissing):
                raise ReplicaAcksMissing(exc.__cause__.acks, exc.__cause__.required) from exc
            raise

    def _eval(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[object],
        thread_id: str | None = None,
        *,
        write: bool = False,
    ) -> Op[Any]:
        args_ = ("EVALSHA", script.sha, len(keys), *keys, *args)
        request = self._write(args_) if write else Command(args_)
        try:
            reply = yield from self._script(script, request)
            return reply if isinstance(request, Command) else reply[0]
        except rex.ResponseError as exc:
            if thread_id is None:
                raise
            _raise_typed(thread_id, exc)


@dataclass(slots=True)
class _Shard:
    """One index shard during a listing: the last entry returned from it (the next page
    starts after it)."""

    key: str
    cursor: bytes = b""
    score: bytes = b""


class Pages:
    """A listing over the index shards, merged in index order (expiry score, then thread
    id), each shard with its own cursor: the last entry returned from it.

    Each page starts afresh from the cursors (so nothing deleted before its page is
    returned, and a thread saved again meanwhile comes round again, as on one index): every
    shard is fetched in one request, about ``1.5 * page_size / shards`` entries each. The
    fetched entries are sorted together and returned up to the first entry not fetched yet
    of a shard that has more (so the merge is in order); the shard that bounds it is fetched
    again if the page is not full. What was fetched and not returned is dropped at the end
    of the page: memory stays within a few pages. A short page is the last.

    Raises:
        InvalidInput: ``page_size`` is not an int in 1 .. the largest page.
    """

    def __init__(self, ops: RedisOps, page_size: int) -> None:
        self._ops, self.page_size = ops, check_page_size(page_size)
        self._shards: list[_Shard] | None = None
        self.done = False

    def next_page(self) -> Op[list[str]]:
        """The next page of thread ids; sets :attr:`done` after the last one."""
        if self._shards is None:  # the layout is known by now (the driver resolved it)
            self._shards = [_Shard(key) for key in self._ops.listed_index_keys]
        elif self._ops.keys.sharded and [s.key for s in self._shards] == [self._ops.keys.index]:
            self._widen()  # begun in the single layout; another call saw a migration begin
        shards, size = self._shards, self.page_size
        chunk = min(size, size * 3 // (2 * len(shards)) + 8)
        ends = [(shard.cursor, shard.score) for shard in shards]  # where the next fetch starts
        more: set[int] = set()  # shards that may hold entries beyond what was fetched
        pending: list[tuple[float, bytes, int, bytes]] = []  # fetched, not returned, in order
        left = [0] * len(shards)  # pending entries of each shard
        starved = list(range(len(shards)))
        out: list[bytes] = []
        while starved:
            replies = yield from self._fetch([(shards[i].key, *ends[i]) for i in starved], chunk)
            if replies is None:  # a migration began before this page: list both layouts
                self._widen()
                return (yield from self.next_page())
            for i, flat in zip(starved, replies, strict=True):
                scores = flat[1::2]
                pending.extend(zip(map(float, scores), flat[0::2], repeat(i), scores))
                left[i] += len(scores)
                if len(flat) == 2 * chunk:
                    more.add(i)
                    ends[i] = (flat[-2], flat[-1])
                else:
                    more.discard(i)
            pending.sort()
            # Only entries up to the first unfetched one of a shard with more are in order.
            cut = len(pending)
            if more:
                bound = min((float(ends[i][1]), ends[i][0]) for i in more)
                cut = bisect.bisect_right(pending, (*bound, len(shards), b""))
            taken = pending[: min(cut, size - len(out))]
            del pending[: len(taken)]
            for _, thread_id, i, score in taken:
                shards[i].cursor, shards[i].score = thread_id, score
                left[i] -= 1
                out.append(thread_id)
            if len(out) >= size:
                break
            starved = [i for i in sorted(more) if not left[i]]  # the bound's shard ran dry
        self.done = len(out) < size
        return [tid.decode("utf-8", "replace") for tid in out]

    def _widen(self) -> None:
        """The single index's listing, carried on over both layouts once a migration has
        begun: the sharded indexes start where the single one stands (a thread moved keeps
        its score), so nothing returned comes again and nothing is skipped."""
        (old,) = cast(list[_Shard], self._shards)
        self._shards = [
            _Shard(key, old.cursor, old.score) for key in self._ops.keys.index_keys
        ] + [old]

    def _fetch(self, which: list[tuple[str, bytes, bytes]], chunk: int) -> Op[list[Any] | None]:
        """Each shard's next entries; None if the namespace left the single-index layout
        (read in the same transaction as its page; the new layout applied)."""
        ops = self._ops
        commands = tuple(
            ("EVALSHA", ops._page.sha, 1, key, chunk, cursor, score)
            for key, cursor, score in which
        )
        if not ops.keys.sharded:  # the layout checked in the same transaction
            layout, reply = yield from ops._script(
                ops._page,
                Pipeline((("GET", ops.keys.layout), *commands), transaction=True),
            )
            if layout is not None and parse_layout(layout) != SINGLE:
                ops._apply_layout(layout)
                return None
            return [reply]
        if len(commands) == 1:
            return [(yield from ops._script(ops._page, Command(commands[0])))]
        # During a migration a thread moves between indexes: read them all at one instant.
        transaction = ops.old is not None
        replies: list[Any] = yield from ops._script(
            ops._page, Pipeline(commands, transaction=transaction)
        )
        return replies


class Sweep:
    """Cleanup of up to ``limit`` (None: all) expired index entries, shard by shard, at
    most :data:`~agents_persistence.base.MAX_PAGE_SIZE` per shard and request (every
    unfinished shard in one request), so Redis is never held long.

    Raises:
        InvalidInput: ``limit`` is neither None nor a positive int.
    """

    def __init__(self, ops: RedisOps, limit: int | None) -> None:
        self._ops, self._limit = ops, check_limit(limit)
        self._active: list[str] | None = None
        self.removed = 0
        self.done = False

    def next_batch(self) -> Op[int]:
        """Remove one batch from each unfinished shard (the limit shared among them); sets
        :attr:`done` once nothing (or the limit) is left."""
        ops, limit = self._ops, self._limit
        if self._active is None:  # the layout is known by now (the driver resolved it)
            if not ops.keys.sharded:  # a migration may have begun: read the layout key
                layout = yield Command(("GET", ops.keys.layout))
                if layout is not None and parse_layout(layout) != SINGLE:
                    ops._apply_layout(layout)
            self._active = list(ops.listed_index_keys)
        active = self._active
        if limit is None:
            batches = [MAX_PAGE_SIZE] * len(active)
        else:
            share, extra = divmod(limit - self.removed, len(active))
            batches = [min(MAX_PAGE_SIZE, share + (k < extra)) for k in range(len(active))]
        sent = [(key, b) for key, b in zip(active, batches, strict=True) if b > 0]
        commands = tuple(("EVALSHA", ops._cleanup.sha, 1, key, b) for key, b in sent)
        if len(commands) == 1:
            replies = [(yield from ops._script(ops._cleanup, Command(commands[0])))]
        else:
            replies = yield from ops._script(ops._cleanup, Pipeline(commands))
        removed = [int(n) for n in replies]
        self._active = [key for (key, b), n in zip(sent, removed, strict=True) if n >= b]
        self._active += [key for key, b in zip(active, batches, strict=True) if b == 0]
        self.removed += sum(removed)
        self.done = not self._active or (limit is not None and self.removed >= limit)
        return sum(removed)


def _header_version(head: object) -> int:
    # Only a header with 20 digits up to MAX_VERSION is ours (as in the Lua scripts);
    # anything else reads as 0.
    if isinstance(head, bytes) and len(head) == VERSION_END and head.startswith(MAGIC):
        digits = head[VERSION_START:VERSION_END]
        if digits.isdigit() and int(digits) <= MAX_VERSION:
            return int(digits)
    return 0


def _result(s: PreparedSave, reply: Any) -> WriteResult | Exception:
    if isinstance(reply, Exception):
        return _typed(s.thread_id, reply)
    code, current = reply
    return WriteResult(s.thread_id, s.version, _OUTCOMES[code], int(current))


def _raise_typed(thread_id: str, exc: Exception) -> NoReturn:
    err = _typed(thread_id, exc)
    if err is exc:
        raise exc
    raise err from exc


def _typed(thread_id: str, exc: Exception) -> Exception:
    """The store's error for what Redis answered about one thread's key."""
    if isinstance(exc, rex.ResponseError) and "WRONGTYPE" in str(exc):
        err = CorruptState(thread_id, "its key holds a Redis value of another type")
    elif isinstance(exc, rex.ResponseError) and "NEWERSCHEMA" in str(exc):
        err = CorruptState(thread_id, "it was written by a newer envelope schema; not overwritten")
    else:
        return exc
    err.__cause__ = exc
    return err
