"""Every Redis key this package touches, built in one place.

A namespace ``ns`` (namespaces never contain ``:``, so the first segment of a key always names
its namespace and no thread id can reach another namespace's keys) has one of two layouts,
recorded in its layout key so that every process agrees:

**sharded** (every namespace created by this release, on one server and on a Redis Cluster
alike): the thread index is split into ``S`` shards (16 by default); a thread belongs to shard
``crc32(thread id) % S``, and every key of a shard carries the shard's hash tag ``{ns:i}`` (a
suffix is added to ``i`` so that shard ``i``'s slot falls in the ``i``-th ``1/S`` of the
16,384 Redis Cluster slots: on a cluster whose primaries hold equal slot ranges, the shards,
hence the threads, spread evenly). So every script and transaction of one operation touches
one slot, and a namespace spreads over every primary:

``ns:{ns:i}:thread:<thread id>``
    The thread's record: an envelope (see :mod:`persistence.codec`) holding either the
    state or a tombstone.
``ns:{ns:i}:index``
    Sorted set of shard ``i``'s live thread ids scored by expiry time in unix milliseconds
    (``+inf`` without TTL). Listing merges the shards in score order, skipping scores in the
    past; cleanup walks the shards and removes only those.
``ns:{ns:i}:staging``
    Scratch key a save writes its payload to inside the same MULTI/EXEC as the
    compare-and-set script, which RENAMEs it into place (so the payload never passes
    through Lua). It only exists inside a transaction, or briefly after a failed one.

**single** (namespaces written by earlier releases, and the Rust crate's): one index
``ns:index``, records at ``ns:thread:<thread id>`` (the Rust crate's key, so its plain-JSON
states load), staging at ``ns:staging``. Fully served on one server; a Redis Cluster cannot
run it (its keys are in unrelated slots), so a cluster store refuses it with
:class:`~agents_persistence.errors.LegacyLayout`.

Either way:

``ns:layout``
    The layout: ``sharded:<S>`` or ``single``. Written once, when the first store meets the
    namespace (``single`` if ``ns:index`` or the crate's ``ns:threads`` already exists), and
    changed only by a migration (:mod:`agents_persistence.migrate`): ``single`` ->
    ``migrating:<S>`` -> ``sharded:<S>``. While it says ``migrating:<S>`` both layouts hold
    threads (a thread in one of them, never both): writes move the thread into the sharded
    layout first, loads read the sharded key then the single one, listings merge both.
``ns:migration``
    Hash of a migration's progress (the SCAN cursor, counts), while one is under way.
``ns:deadletter``
    List of dead-lettered hand-offs (JSON), newest first.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from agents_persistence.validation import check_namespace
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = [
    "DEFAULT_SHARDS",
    "MAX_SHARDS",
    "SINGLE",
    "Keys",
    "layout_value",
    "migrating_value",
    "parse_layout",
    "parse_migrating",
]

#: Index shards of a namespace created by this release.
DEFAULT_SHARDS = 16
#: The most shards a layout may name.
MAX_SHARDS = 1024
#: ``shards`` of the single-index layout of earlier releases.
SINGLE = 0


@lru_cache(maxsize=4096)
def _shard_tags(namespace: str, shards: int) -> tuple[str, ...]:
    """Hash tags (without braces) of the shards: ``ns:i``, or ``ns:i.<n>`` with the smallest
    ``n`` whose slot lies in the ``i``-th ``1/shards`` of the slot space."""
    tags = []
    for i in range(shards):
        low = i * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        tag, n = f"{namespace}:{i}", 0
        while not low <= key_slot(tag.encode()) < high:
            n += 1
            tag = f"{namespace}:{i}.{n}"
        tags.append(tag)
    return tuple(tags)


def layout_value(shards: int) -> bytes:
    """What the layout key holds for ``shards`` (:data:`SINGLE`: the single index)."""
    return b"single" if shards == SINGLE else f"sharded:{shards}".encode()


def parse_layout(raw: bytes | str) -> int | None:
    """The shard count a layout key's value names (:data:`SINGLE` for ``single``), or None
    if it names a layout this release does not know."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if text == "single":
        return SINGLE
    kind, _, count = text.partition(":")
    if kind == "sharded" and count.isdigit() and 1 <= int(count) <= MAX_SHARDS:
        return int(count)
    return None


def migrating_value(shards: int) -> bytes:
    """What the layout key holds while a migration moves the namespace from the single
    index to ``shards`` shards."""
    return f"migrating:{shards}".encode()


def parse_migrating(raw: bytes | str) -> int | None:
    """The target shard count of a ``migrating:<S>`` layout value, else None."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    kind, _, count = text.partition(":")
    if kind == "migrating" and count.isdigit() and 1 <= int(count) <= MAX_SHARDS:
        return int(count)
    return None


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace in one layout.

    Args:
        namespace: the namespace.
        shards: index shards (:data:`SINGLE`: the single-index layout of earlier releases).
    """

    namespace: str
    shards: int = DEFAULT_SHARDS
    _tags: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if not SINGLE <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 0 .. {MAX_SHARDS}, got {self.shards}")
        if self.shards:
            object.__setattr__(self, "_tags", _shard_tags(self.namespace, self.shards))

    @property
    def sharded(self) -> bool:
        """False for the single-index layout."""
        return self.shards != SINGLE

    @property
    def shard_count(self) -> int:
        """How many index keys there are (1 for the single index)."""
        return max(self.shards, 1)

    def shard(self, thread_id: str) -> int:
        """The shard of ``thread_id`` (0 in the single-index layout)."""
        if not self.shards:
            return 0
        return zlib.crc32(thread_id.encode("utf-8", "surrogatepass")) % self.shards

    def tag(self, shard: int) -> str:
        """The hash tag of ``shard``'s keys (``{ns:i...}``; "" in the single-index layout)."""
        return f"{{{self._tags[shard]}}}" if self.shards else ""

    def _base(self, shard: int) -> str:
        if not self.shards:
            return f"{self.namespace}:"
        return f"{self.namespace}:{self.tag(shard)}:"

    def thread(self, thread_id: str) -> str:
        """Key of one thread's record."""
        return f"{self._base(self.shard(thread_id))}thread:{thread_id}"

    def index_of(self, shard: int) -> str:
        """The index key of ``shard``."""
        return f"{self._base(shard)}index"

    def staging_of(self, shard: int) -> str:
        """The staging key of ``shard``."""
        return f"{self._base(shard)}staging"

    @property
    def index_keys(self) -> tuple[str, ...]:
        """Every index key, shard by shard."""
        return tuple(self.index_of(i) for i in range(self.shard_count))

    @property
    def index(self) -> str:
        """The single-index layout's sorted set of live thread ids, scored by expiry (unix
        ms): ``ns:index``, whatever this builder's layout (see :attr:`index_keys`)."""
        return f"{self.namespace}:index"

    @property
    def crate_index(self) -> str:
        """The Rust crate's set of thread ids (``ns:threads``), never written here."""
        return f"{self.namespace}:threads"

    @property
    def staging(self) -> str:
        """The single-index layout's staging key (see :meth:`staging_of`)."""
        return f"{self.namespace}:staging"

    @property
    def layout(self) -> str:
        """The key that records the namespace's layout."""
        return f"{self.namespace}:layout"

    @property
    def migration(self) -> str:
        """Hash of a migration's progress."""
        return f"{self.namespace}:migration"

    @property
    def dead_letters(self) -> str:
        """List of dead-lettered hand-offs."""
        return f"{self.namespace}:deadletter"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this namespace."""
        return f"{self.namespace}:*"

    def with_shards(self, shards: int) -> Keys:
        """The same namespace in another layout."""
        return Keys(self.namespace, shards)
