"""Moving a namespace from the single-index layout to the sharded one, online.

A namespace written by an earlier release (``ns:index`` and records at ``ns:thread:<id>``)
or by the Rust crate (plain JSON at ``ns:thread:<id>`` and the set ``ns:threads``) keeps the
single-index layout (:mod:`agents_persistence.keys`), which a Redis Cluster cannot serve.
:func:`migrate_namespace` moves it into the sharded layout on the server that holds it,
while stores of this release keep reading and writing it:

1. The layout key goes from ``single`` (or nothing: a namespace of a release that did not
   record it) to ``migrating:<S>``. From then on every store of this release writes in the
   sharded layout, moving the thread first (``move.lua``, in the same transaction as the
   write); loads read both layouts in one transaction and listings merge both indexes. A
   store that still believes the namespace is ``single`` finds out on its next request:
   the save and delete scripts check the layout key and refuse (``LAYOUTMOVED``), and the
   store resends in the new layout; its loads and listing pages read the layout key in
   the same transaction as the data.
2. ``SCAN`` over ``ns:thread:*`` (the single layout's records only: sharded keys start with
   ``ns:{``), a batch at a time, each record moved by ``move.lua``: atomically RENAMEd into
   its shard (value, TTL and tombstones kept; listed with its old expiry score, or with one
   from its TTL if only the crate's set listed it), or dropped if the sharded layout already
   holds the thread at the same or a newer version (a version never goes back). The SCAN
   cursor and the counts are kept in ``ns:migration`` after each batch: a run that is
   killed resumes where it stood, and a record moved twice is impossible (it is gone from
   the old layout once moved).
3. The entries left in ``ns:index`` and ``ns:threads`` (threads whose record expired) are
   dropped the same way; then the layout key becomes ``sharded:<S>`` and the old index, the
   crate's set, the old staging key and the progress hash are deleted, in one transaction.

A record that is neither a record of ours nor snapshot JSON, or a key of another Redis type,
is moved as it is (nothing is lost; a load still raises ``CorruptState``) and counted as
corrupt. A key whose thread id this release refuses (not UTF-8, control characters...) is
left where it is and counted as skipped.

Only on one server: the two layouts' keys live in unrelated slots, which a Redis Cluster
cannot serve in one script. Migrate there, then copy the namespace to a cluster
(``redis-cli --cluster import``, or ``MIGRATE``/``DUMP``+``RESTORE`` of its keys). Writers of
earlier releases and of the Rust crate know nothing of the layout key: stop them first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from agents_persistence.connect import is_cluster
from agents_persistence.errors import InvalidThreadId, StoreMisconfigured
from agents_persistence.keys import (
    DEFAULT_SHARDS,
    MAX_SHARDS,
    SINGLE,
    Keys,
    layout_value,
    migrating_value,
    parse_layout,
    parse_migrating,
)
from agents_persistence.scripts import lua
from agents_persistence.validation import check_thread_id

__all__ = ["DEFAULT_MIGRATE_BATCH", "MigrationReport", "migrate_namespace"]

#: Records moved per round trip (one pipeline of ``move.lua`` calls).
DEFAULT_MIGRATE_BATCH = 500
#: Skipped and corrupt threads named in a report, at most.
_NAMED = 20
_COUNTS = ("moved", "already_newer", "skipped", "expired", "corrupt", "tombstones", "crate")


@dataclass(slots=True)
class MigrationReport:
    """What a migration did (or, with ``dry_run``, would do).

    Attributes:
        namespace: the namespace.
        shards: the sharded layout's shard count.
        state: the layout found before this run: ``single``, ``migrating`` (an interrupted
            run resumed), ``sharded`` (nothing to do), ``empty`` (no keys of either layout).
        finished: the namespace is in the sharded layout now.
        dry_run: nothing was written.
        moved: records moved into the sharded layout (tombstones and the crate's included).
        already_newer: records dropped because the sharded layout held the thread at the
            same or a newer version (written there meanwhile).
        skipped: keys left where they were: their thread id is not one this release takes.
        expired: index or set entries whose record had expired (dropped).
        corrupt: records moved as they are although they cannot be read (loads raise
            CorruptState, as before).
        tombstones: of the moved, deletes' tombstones.
        crate: of the moved, plain-JSON records of the Rust crate.
        batches: round trips of moves in this run.
        seconds: this run's wall time.
        skipped_ids, corrupt_ids: the first of those threads, by id.

    Counts are those of every run of the migration (a resumed run adds to what the runs
    before it recorded); a run killed mid-batch may leave that batch uncounted.
    """

    namespace: str
    shards: int
    state: str = "single"
    finished: bool = False
    dry_run: bool = False
    moved: int = 0
    already_newer: int = 0
    skipped: int = 0
    expired: int = 0
    corrupt: int = 0
    tombstones: int = 0
    crate: int = 0
    batches: int = 0
    seconds: float = 0.0
    skipped_ids: list[str] = field(default_factory=list)
    corrupt_ids: list[str] = field(default_factory=list)

    def count_moved(self, thread_id: str, kind: str) -> None:
        """Count a record moved (or, in a dry run, to move) of ``kind``: ``t`` a tombstone,
        ``j`` the Rust crate's JSON, ``x``/``w`` corrupt (unreadable, or another Redis type)."""
        self.moved += 1
        self.tombstones += kind == "t"
        self.crate += kind == "j"
        if kind in ("x", "w"):
            self.corrupt += 1
            if len(self.corrupt_ids) < _NAMED:
                self.corrupt_ids.append(thread_id)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def migrate_namespace(
    client: redis.Redis,
    namespace: str,
    *,
    shards: int = DEFAULT_SHARDS,
    batch: int = DEFAULT_MIGRATE_BATCH,
    dry_run: bool = False,
    on_batch: Callable[[MigrationReport], None] | None = None,
) -> MigrationReport:
    """Move ``namespace`` from the single-index layout into ``shards`` shards, online (the
    module docstring gives the protocol). Idempotent and resumable: run it again after an
    interruption; on a namespace already sharded it does nothing.

    Args:
        client: a client of the one server that holds the namespace (not a cluster).
        namespace: the namespace.
        shards: shard count of the sharded layout (a migration already under way keeps the
            count it started with).
        batch: records moved per round trip.
        dry_run: write nothing; count what would move.
        on_batch: called with the report so far after each batch.

    Raises:
        StoreMisconfigured: the layout key names a layout this release does not know, or
            ``client`` is a Redis Cluster client.
        ValueError: ``shards`` or ``batch`` out of range.
    """
    if is_cluster(client):
        raise StoreMisconfigured(
            "",
            "a namespace is migrated on the one server that holds it, not on a Redis Cluster "
            "(which cannot hold the single-index layout); migrate there, then copy it over",
        )
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1 .. {MAX_SHARDS}, got {shards}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    started = time.monotonic()
    old = Keys(namespace, SINGLE)
    report = MigrationReport(namespace, shards, dry_run=dry_run)
    raw = client.get(old.layout)
    if raw is not None and parse_layout(raw) not in (None, SINGLE):
        report.state, report.finished = "sharded", True
        report.shards = parse_layout(raw) or shards
        return _done(report, started)
    target = parse_migrating(raw) if raw is not None else None
    if raw is not None and target is None and parse_layout(raw) is None:
        raise StoreMisconfigured(old.layout, "it names a layout this release does not know")
    if target is not None:
        report.state, report.shards = "migrating", target
    elif raw is None and not _has_single_layout(client, old):
        report.state = "empty"
        return _done(report, started)
    if dry_run:
        _survey(client, old, report, batch)
        return _done(report, started)
    if target is None:
        _begin(client, old, migrating_value(shards))
    migration = _Migration(client, old, report, batch, on_batch)
    migration.run()
    return _done(report, started)


def _done(report: MigrationReport, started: float) -> MigrationReport:
    report.seconds = time.monotonic() - started
    return report


def _has_single_layout(client: redis.Redis, old: Keys) -> bool:
    if client.exists(old.index, old.crate_index):
        return True
    cursor, found = client.scan(0, match=_record_pattern(old), count=100)
    while not found and cursor:
        cursor, found = client.scan(cursor, match=_record_pattern(old), count=1000)
    return bool(found)


def _record_pattern(old: Keys) -> str:
    # Namespaces are letters, digits, '_', '.', '-': nothing to escape. A sharded key
    # continues with '{' after the namespace, never with 'thread:'.
    return f"{old.namespace}:thread:*"


def _begin(client: redis.Redis, old: Keys, value: bytes) -> None:
    """Set the layout key to ``value`` (migrating) unless another process changed it from
    ``single`` / nothing meanwhile."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(old.layout)  # type: ignore[no-untyped-call]
                raw = pipe.get(old.layout)
                if raw is not None and parse_layout(raw) != SINGLE and raw != value:
                    parsed = parse_migrating(raw)
                    if parsed is None:
                        raise StoreMisconfigured(old.layout, "it changed during the migration")
                    pipe.unwatch()
                    return  # another run began it
                pipe.multi()
                pipe.set(old.layout, value)
                pipe.execute()
                return
            except redis.WatchError:
                continue


class _Migration:
    def __init__(
        self,
        client: redis.Redis,
        old: Keys,
        report: MigrationReport,
        batch: int,
        on_batch: Callable[[MigrationReport], None] | None,
    ) -> None:
        self.client, self.old, self.report = client, old, report
        self.new = old.with_shards(report.shards)
        self.value = migrating_value(report.shards)
        self.batch, self.on_batch = batch, on_batch
        self.move = client.register_script(lua("move").source)
        self.skipped: set[bytes] = set()

    def run(self) -> None:
        old, client, report = self.old, self.client, self.report
        progress = client.hgetall(old.migration)
        for name in _COUNTS:
            setattr(report, name, int(progress.get(name.encode(), 0)))
        cursor = int(progress.get(b"cursor", 0))
        # Records, from the stored cursor on; then again from 0 until a pass moves nothing
        # (a record a writer of an earlier release or the crate put back meanwhile).
        while True:
            moved_before = report.moved + report.already_newer
            while True:
                cursor, keys = client.scan(cursor, match=_record_pattern(old), count=self.batch)
                prefix = len(old.thread(""))
                self._moves([_bytes(key)[prefix:] for key in keys], cursor)
                if not cursor:
                    break
            if report.moved + report.already_newer == moved_before:
                break
        # Index and set entries left: threads whose record expired (or came back).
        for source in (old.index, old.crate_index):
            ids: list[bytes] = []
            scan = client.zscan_iter if source == old.index else client.sscan_iter
            for item in scan(source, count=self.batch):
                ids.append(item[0] if isinstance(item, tuple) else item)
                if len(ids) >= self.batch:
                    self._moves(ids, 0)
                    ids = []
            self._moves(ids, 0)
        self._finish()

    def _moves(self, raw_ids: Iterable[bytes], cursor: int) -> None:
        """Move a batch of threads; record the cursor and counts."""
        report, old, new = self.report, self.old, self.new
        ids: list[str] = []
        for raw in raw_ids:
            try:
                ids.append(check_thread_id(raw.decode("utf-8")))
            except (UnicodeDecodeError, InvalidThreadId):
                if raw not in self.skipped:
                    self.skipped.add(raw)
                    report.skipped += 1
                    if len(report.skipped_ids) < _NAMED:
                        report.skipped_ids.append(raw.decode("utf-8", "backslashreplace"))
        if ids:
            with self.client.pipeline(transaction=False) as pipe:
                for tid in ids:
                    keys = [
                        old.thread(tid), old.index, old.crate_index,
                        new.thread(tid), new.index_of(new.shard(tid)), new.layout,
                    ]  # fmt: skip
                    self.move(keys=keys, args=[tid, self.value], client=pipe)
                replies = pipe.execute()
            for tid, (code, kind) in zip(ids, replies, strict=True):
                self._count(tid, int(code), kind.decode() if isinstance(kind, bytes) else kind)
        report.batches += 1
        counts: dict[Any, int] = {name: getattr(report, name) for name in _COUNTS}
        if cursor:
            counts["cursor"] = cursor
        self.client.hset(old.migration, mapping=counts)
        if self.on_batch is not None:
            self.on_batch(report)

    def _count(self, tid: str, code: int, kind: str) -> None:
        report = self.report
        if code < 0:
            raise StoreMisconfigured(self.old.layout, "it changed during the migration")
        if code == 2:
            report.expired += kind == "e"
            return
        if code == 1:
            report.already_newer += 1
            return
        report.count_moved(tid, kind)

    def _finish(self) -> None:
        old, client = self.old, self.client
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(old.layout)  # type: ignore[no-untyped-call]
                    if pipe.get(old.layout) != self.value:
                        raise StoreMisconfigured(old.layout, "it changed during the migration")
                    pipe.multi()
                    pipe.set(old.layout, layout_value(self.report.shards))
                    pipe.delete(old.index, old.crate_index, old.staging, old.migration)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.report.finished = True


def _survey(client: redis.Redis, old: Keys, report: MigrationReport, batch: int) -> None:
    """A dry run's counts: the records of the single layout, by kind, and the index and
    set entries without a record."""
    new = old.with_shards(report.shards)
    prefix = len(old.thread(""))
    seen: set[bytes] = set()
    for chunk in _chunks(client.scan_iter(match=_record_pattern(old), count=batch), batch):
        ids = [_bytes(key)[prefix:] for key in chunk]
        good: list[str] = []
        for raw in ids:
            seen.add(raw)
            try:
                good.append(check_thread_id(raw.decode("utf-8")))
            except (UnicodeDecodeError, InvalidThreadId):
                report.skipped += 1
                if len(report.skipped_ids) < _NAMED:
                    report.skipped_ids.append(raw.decode("utf-8", "backslashreplace"))
        with client.pipeline(transaction=False) as pipe:
            for tid in good:
                pipe.type(old.thread(tid))
                pipe.getrange(old.thread(tid), 0, 23)
                pipe.getrange(new.thread(tid), 0, 23)
            replies = pipe.execute(raise_on_error=False)
        for i, tid in enumerate(good):
            kind_type, head, held = replies[3 * i : 3 * i + 3]
            version, kind = _head(head) if kind_type == b"string" else (0, "w")
            if isinstance(held, bytes) and held and _head(held)[0] >= version:
                report.already_newer += 1
                continue
            report.count_moved(tid, kind)
        report.batches += 1
    listed = {m for m, _ in client.zscan_iter(old.index)} | set(client.sscan_iter(old.crate_index))
    report.expired = len(listed - seen)


def _head(head: object) -> tuple[int, str]:
    """(version, kind) of a record's first 24 bytes, as ``move.lua`` reads them."""
    if not isinstance(head, bytes):
        return 0, "x"
    if len(head) == 24 and head.startswith(b"AP1") and head[4:].isdigit():
        return int(head[4:]), "t" if head[3:4] == b"t" else "r"
    return 0, "j" if head.lstrip().startswith(b"{") else "x"


def _bytes(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def _chunks(items: Iterable[bytes], size: int) -> Iterable[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
