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
- **Redis CPU per snapshot**: ``used_cpu_user + used_cpu_sys`` summed over the primaries
  (``INFO cpu``), before and after ``save_many`` batches of 100 (the worker's write path),
  over the snapshots written. A cluster primary also feeds its replica; the single server
  has none.
"""

from __future__ import annotations

import os

from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology

from bench.common import Context, Section, label, snapshot

__all__ = ["run"]

_SER = AgentStateSnapshot.__pydantic_serializer__
_SIZES = (1024, 4 * 1024, 16 * 1024, 64 * 1024, 256 * 1024)
_VARIANTS = ("single", "cluster")
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


def _cpu(ctx: Context, store: RedisCheckpointer, size: int, n: int) -> float:
    """Redis CPU (µs, summed over the primaries) per snapshot of ``size`` written by
    ``save_many`` batches of 100, after a warm-up (scripts loaded, connections open)."""
    states = [snapshot(size, seed=i) for i in range(50)]
    _write(store, "w", states, 200)
    before = _sum(store, "used_cpu_user", "used_cpu_sys")
    _write(store, "c", states, n)
    ctx.advance(n)
    return (_sum(store, "used_cpu_user", "used_cpu_sys") - before) / n * 1e6


def run(ctx: Context) -> Section:
    """Measure P11."""
    sec = Section(
        "P11",
        "Capacity inputs: Redis memory per thread and Redis CPU per save, one server vs cluster",
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
            for variant in _VARIANTS:
                got = _at_scale(ctx, store(variant, "index"), small, big)
                index_entry[variant], growth[variant], dataset[variant] = got
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
            row(
                f"index entry: MEMORY USAGE of the 16 shards / {big:,} threads",
                "any",
                index_entry,
                "bytes",
            )
            shown = f"1 KB ({json_small / 1024:,.1f} KiB)"
            row(f"used_memory growth / thread, {big:,} threads", shown, growth, "bytes")
            row(f"used_memory_dataset growth / thread, {big:,} threads", shown, dataset, "bytes")
            for size in (4 * 1024, 64 * 1024):
                cpu = {v: _cpu(ctx, store(v, f"cpu{size}"), size, cpu_n) for v in _VARIANTS}
                row("Redis CPU / snapshot, save_many x100", label(size), cpu, "us")
            sec.notes.append(_NOTE.format(big=big))
        finally:
            for s in made:
                s.drop_namespace()
                s.close()
    return sec
