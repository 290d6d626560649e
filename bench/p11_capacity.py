"""P11: capacity inputs: Redis memory per thread and Redis CPU per save, one server vs a
Redis Cluster (3 primaries + 3 replicas), in one run.

- **Memory per thread record**: a fresh (sharded) namespace gets ``count`` threads of each
  snapshot size (default codec: zstd from 16 KB); ``MEMORY USAGE <record> SAMPLES 0`` of
  every record, averaged (what Redis accounts for the key, its value and its dict entry).
- **Index entry per thread**: ``MEMORY USAGE`` of every index shard over the number of
  threads, for a namespace of ``big`` threads (enough that every shard is a skiplist, as in
  any namespace past ~2,000 threads, not the compact listpack of small ones).
- **used_memory growth per thread**: ``INFO memory`` ``used_memory`` (and
  ``used_memory_dataset``, which leaves out the server's overhead: replication backlog,
  client buffers), summed over the primaries, before and after writing those ``big``
  threads, over ``big`` (allocator rounding and, on a cluster, its per-key slot bookkeeping
  included).
- **Tombstone**: ``MEMORY USAGE`` of the key a ``delete_thread`` leaves behind (kept for
  ``tombstone_ttl``; its index entry goes).
- **Redis CPU per operation**: ``used_cpu_user + used_cpu_sys`` summed over the primaries
  (``INFO cpu``), before and after a run of the operation, over the calls: a snapshot
  written by ``save_many`` batches of 100 (the worker's path; the same 100 threads saved
  again, newer each time), one ``save_state``, one ``load_state``, the first listing page
  of 500 of the big namespace, one ``cleanup_expired`` removing 500 expired entries. What
  the server spends, unlike a latency, does not grow when the machine's other processes
  delay the client. A cluster primary also feeds its replica; the single server has none.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from functools import partial

from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology

from bench.common import Context, Section, label, snapshot

__all__ = ["run"]

_SER = AgentStateSnapshot.__pydantic_serializer__
_SIZES = (1024, 4 * 1024, 16 * 1024, 64 * 1024, 256 * 1024)
_VARIANTS = ("single", "cluster")
_EXPIRED = 500
_NOTE = (
    "Default codec: zstd level 1 from 16 KiB of JSON, so the 64 KB and 256 KB records are "
    "compressed and the 16 KB one (15.9 KiB of JSON) is not. used_memory growth includes "
    "each primary's replication backlog filling up (up to 1 MB per primary on the cluster, "
    "whose primaries have replicas); used_memory_dataset leaves such overhead out. Per "
    "thread = the mean MEMORY USAGE of its record + the index entry measured at {big:,} "
    "threads. A replica holds the same again. Redis CPU is summed over every primary (a "
    "cluster primary also streams to its replica)."
)


def _sum(store: RedisCheckpointer, *fields: str) -> float:
    """``fields`` of INFO, summed over the store's primaries."""
    return sum(
        float(str(info.get(name, 0))) for info in store.primary_infos().values() for name in fields
    )


def _records(store: RedisCheckpointer, ids: list[str]) -> float:
    keys = store.keys
    return sum(int(store.client.memory_usage(keys.thread(t), samples=0) or 0) for t in ids) / len(
        ids
    )


def _index(store: RedisCheckpointer) -> int:
    return sum(int(store.client.memory_usage(k, samples=0) or 0) for k in store.keys.index_keys)


def _kib(n: float) -> str:
    return f"{n / 1024:,.2f} KiB"


def _write(
    store: RedisCheckpointer, prefix: str, states: list[AgentStateSnapshot], n: int
) -> None:
    for i in range(0, n, 100):
        store.save_many(
            [
                store.prepare(f"{prefix}{j}", states[j % len(states)])
                for j in range(i, min(n, i + 100))
            ]
        )


def _at_scale(
    ctx: Context, store: RedisCheckpointer, states: list[AgentStateSnapshot], n: int
) -> tuple[float, float, float]:
    """Write ``n`` threads; per thread: the index entry (MEMORY USAGE of the shards), the
    growth of ``used_memory`` and of ``used_memory_dataset`` (summed over the primaries)."""
    before = _sum(store, "used_memory"), _sum(store, "used_memory_dataset")
    _write(store, "i", states, n)
    ctx.advance(n)
    return (
        _index(store) / n,
        (_sum(store, "used_memory") - before[0]) / n,
        (_sum(store, "used_memory_dataset") - before[1]) / n,
    )


def _tombstone(store: RedisCheckpointer, states: list[AgentStateSnapshot], n: int) -> float:
    """Mean MEMORY USAGE of the key a delete leaves (the tombstone keeping older saves out
    for ``tombstone_ttl``), over ``n`` threads saved and then deleted."""
    _write(store, "t", states, n)
    for i in range(n):
        store.delete_thread(f"t{i}")
    return _records(store, [f"t{i}" for i in range(n)])


def _cpu_of(store: RedisCheckpointer, calls: Callable[[], object], n: int) -> float:
    """Redis CPU (µs, summed over the primaries) per call of ``calls``, ``n`` calls after
    one untimed (scripts loaded, connections open)."""
    calls()
    before = _sum(store, "used_cpu_user", "used_cpu_sys")
    for _ in range(n):
        calls()
    return (_sum(store, "used_cpu_user", "used_cpu_sys") - before) / n * 1e6


def _cpu_of_cleanup(store: RedisCheckpointer, url: str, rounds: int) -> float:
    """Redis CPU (µs, summed over the primaries) per ``cleanup_expired`` removing
    ``_EXPIRED`` entries (planted with a 50 ms TTL, waited for, then only the cleanup counted)."""
    short = RedisCheckpointer.from_url(url, namespace=store.namespace, ttl=0.05)
    state, spent = snapshot(512), 0.0
    try:
        for r in range(rounds):
            short.save_many([short.prepare(f"x{r}-{j}", state) for j in range(_EXPIRED)])
            deadline = time.monotonic() + 30
            while store.count_threads()[1] < _EXPIRED:
                if time.monotonic() > deadline:
                    raise RuntimeError("planted entries did not expire in 30 s")
                time.sleep(0.01)
            before = _sum(store, "used_cpu_user", "used_cpu_sys")
            if store.cleanup_expired() != _EXPIRED:
                raise RuntimeError("cleanup did not remove every planted entry")
            spent += _sum(store, "used_cpu_user", "used_cpu_sys") - before
    finally:
        short.close()
    return spent / rounds * 1e6


def _save_batch(store: RedisCheckpointer, states: list[AgentStateSnapshot]) -> None:
    """Save ``states`` as threads ``c0``.. in one ``save_many`` (each call a newer version:
    the steady state of agents saving their threads again)."""
    store.save_many([store.prepare(f"c{i}", st) for i, st in enumerate(states)])


def _first_page(store: RedisCheckpointer) -> list[str]:
    return list(itertools.islice(store.iter_threads(page_size=500), 500))


def _cpu_rows(
    ctx: Context,
    stores: dict[str, RedisCheckpointer],
    listed: dict[str, RedisCheckpointer],
    urls: dict[str, str],
    n: int,
) -> list[tuple[str, str, dict[str, float]]]:
    """Redis CPU per operation on one server and on the cluster: (measure, size, figures)."""
    rows = []
    for size in (4 * 1024, 64 * 1024):
        batch = [snapshot(size, seed=i) for i in range(100)]
        got = {
            v: _cpu_of(s, partial(_save_batch, s, batch), n // 100) / 100
            for v, s in stores.items()
        }
        ctx.advance(2 * n)
        rows.append(("Redis CPU / snapshot, save_many x100", label(size), got))
        if size == 4 * 1024:
            one = batch[0]
            saves = {
                v: _cpu_of(s, partial(s.save_state, "one", one), n // 4) for v, s in stores.items()
            }
            loads = {
                v: _cpu_of(s, partial(s.load_state, "one"), n // 4) for v, s in stores.items()
            }
            rows.append(("Redis CPU / save_state (one call)", label(size), saves))
            rows.append(("Redis CPU / load_state", label(size), loads))
    page = {v: _cpu_of(s, partial(_first_page, s), 50) for v, s in listed.items()}
    rows.append(("Redis CPU / first listing page of 500 (the big namespace)", "any", page))
    cleanup = {v: _cpu_of_cleanup(s, urls[v], 5) for v, s in stores.items()}
    rows.append((f"Redis CPU / cleanup_expired of {_EXPIRED} expired", "any", cleanup))
    return rows


def run(ctx: Context) -> Section:
    """Measure P11."""
    sec = Section(
        "P11",
        "Capacity inputs: Redis memory per thread and CPU per operation, one server vs cluster",
        ["measure", "snapshot (JSON)", "single", "cluster", "cluster ÷ single"],
    )
    ns = f"bench-p11-{os.getpid()}"
    count = ctx.scale(100, 300)
    big = ctx.scale(20_000, 50_000)
    cpu_n = ctx.scale(2_000, 5_000)
    with RedisClusterTopology() as cluster:
        urls = {"single": ctx.redis_url, "cluster": cluster.url}
        ctx.start("P11", len(_SIZES) * 2 * count + 2 * big + 2 * 2 * cpu_n)
        made: list[RedisCheckpointer] = []

        def store(variant: str, name: str) -> RedisCheckpointer:
            s = RedisCheckpointer.from_url(urls[variant], namespace=f"{ns}-{name}-{variant}")
            made.append(s)
            return s

        def row(measure: str, size: str, got: dict[str, float], fmt: str) -> None:
            one, many = got["single"], got["cluster"]

            def shown(v: float) -> str:
                return f"{v:,.0f} B ({_kib(v)})" if fmt == "bytes" else f"{v:,.1f} µs"

            sec.add(**{
                "measure": measure, "snapshot (JSON)": size, "single": shown(one),
                "cluster": shown(many), "cluster ÷ single": f"{many / one:.2f}x" if one else "-",
                "_single": one, "_cluster": many,
            })  # fmt: skip

        try:
            # the index at scale, and used_memory growth per thread
            small = [snapshot(1024, seed=i) for i in range(50)]
            json_small = sum(len(_SER.to_json(s)) for s in small) / len(small)
            index_entry: dict[str, float] = {}
            growth: dict[str, float] = {}
            dataset: dict[str, float] = {}
            big_stores = {v: store(v, "index") for v in _VARIANTS}
            for variant, s in big_stores.items():
                index_entry[variant], growth[variant], dataset[variant] = _at_scale(
                    ctx, s, small, big
                )
            # records at each size
            for size in _SIZES:
                states = [snapshot(size, seed=i) for i in range(count)]
                json_len = sum(len(_SER.to_json(s)) for s in states) / count
                record = {}
                for variant in _VARIANTS:
                    s = store(variant, f"r{size}")
                    _write(s, "r", states, count)
                    ctx.advance(count)
                    record[variant] = _records(s, [f"r{j}" for j in range(count)])
                shown = f"{label(size)} ({json_len / 1024:,.1f} KiB)"
                row("record: MEMORY USAGE", shown, record, "bytes")
                row(
                    "per thread: record + index entry",
                    shown,
                    {v: record[v] + index_entry[v] for v in _VARIANTS},
                    "bytes",
                )
            tomb = {v: _tombstone(store(v, "tomb"), small, count) for v in _VARIANTS}
            row("tombstone of a deleted thread: MEMORY USAGE", "any", tomb, "bytes")
            row(
                f"index entry: MEMORY USAGE of the 16 shards / {big:,} threads",
                "any",
                index_entry,
                "bytes",
            )
            shown = f"1 KB ({json_small / 1024:,.1f} KiB)"
            row(f"used_memory growth / thread, {big:,} threads", shown, growth, "bytes")
            row(f"used_memory_dataset growth / thread, {big:,} threads", shown, dataset, "bytes")
            cpu_stores = {v: store(v, "cpu") for v in _VARIANTS}
            for measure, what, got in _cpu_rows(ctx, cpu_stores, big_stores, urls, cpu_n):
                row(measure, what, got, "us")
            sec.notes.append(_NOTE.format(big=big))
        finally:
            for s in made:
                s.drop_namespace()
                s.close()
    return sec
