"""P4: listing and cleanup with 10k and with 1M threads in the index.

The index (16 sorted sets scored by expiry, the sharded layout) is filled directly with
pipelined ``ZADD``s in a private ``redis-server``: listing and cleanup read only the index,
so the records themselves are left out. Each size holds N live threads plus 10k expired ones.

- first page: the first 500 ids from ``iter_threads(page_size=500)``.
- full iteration: every live id from ``iter_threads()``, counted, not kept.
- cleanup: ``cleanup_expired()`` removing the 10k expired entries.

Peak memory is the Python process's, from ``tracemalloc``, in a second pass (tracing
slows Python down, so times come from an untraced pass).
"""

from __future__ import annotations

import os
import statistics
import time
import tracemalloc
from collections.abc import Callable

import redis
from agents_persistence import RedisCheckpointer
from agents_persistence.keys import Keys

from bench.common import Context, Section, fmt_us
from bench.servers import private_redis

__all__ = ["run"]

_EXPIRED = 10_000
_PAGE = 500


def _fill(url: str, namespace: str, live: int, expired: int, tag: str) -> None:
    """Plant ``live`` + ``expired`` index entries directly (saving 1M threads would take
    minutes and measure nothing P4 is about)."""
    client, keys = redis.Redis.from_url(url), Keys(namespace)  # the sharded layout
    now_ms = int(time.time() * 1000)
    future, past = now_ms + 86_400_000, now_ms - 60_000
    chunk = 10_000

    def plant(entries: dict[str, float]) -> None:  # each entry into its thread's shard
        shards: dict[str, dict[str, float]] = {}
        for tid, score in entries.items():
            shards.setdefault(keys.index_of(keys.shard(tid)), {})[tid] = score
        for index, part in shards.items():
            pipe.zadd(index, part)

    pipe = client.pipeline(transaction=False)
    for start in range(0, live, chunk):
        plant({f"thread-{i:09d}": future for i in range(start, min(live, start + chunk))})
        if len(pipe) >= 160:
            pipe.execute()
    for start in range(0, expired, chunk):
        stop = min(expired, start + chunk)
        plant({f"gone-{tag}-{i:09d}": past - i for i in range(start, stop)})
    pipe.execute()
    client.close()


def _peak(fn: Callable[[], object]) -> int:
    # No gc.collect() first: it empties CPython's free lists, and refilling them (bounded,
    # a few hundred KiB at most, whatever the index size) would show up as this call's peak.
    fn()  # warm: free lists and caches in their steady state
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _first_page(store: RedisCheckpointer) -> list[str]:
    it = store.iter_threads(page_size=_PAGE)
    return [next(it) for _ in range(_PAGE)]


def _count_all(store: RedisCheckpointer) -> int:
    return sum(1 for _ in store.iter_threads(page_size=_PAGE))


def _measure(ctx: Context, store: RedisCheckpointer, live: int, url: str) -> dict[str, float]:
    reps = ctx.scale(30, 100)
    firsts = []
    _first_page(store)  # warm-up: script cache, connection
    for _ in range(reps):
        t0 = time.perf_counter()
        _first_page(store)
        firsts.append(time.perf_counter() - t0)
    ctx.advance(1)
    fulls = []
    for _ in range(3 if live > 100_000 else 15):
        t0 = time.perf_counter()
        counted = _count_all(store)
        fulls.append(time.perf_counter() - t0)
        if counted != live:
            raise RuntimeError(f"P4: iter_threads yielded {counted} ids, expected {live}")
    full = statistics.median(fulls)
    ctx.advance(1)
    cleanups = []
    for rep in range(5):
        if rep:
            _fill(url, store.namespace, 0, _EXPIRED, f"r{rep}")
        t0 = time.perf_counter()
        removed = store.cleanup_expired()
        cleanups.append(time.perf_counter() - t0)
        if removed != _EXPIRED:
            raise RuntimeError(f"P4: cleanup removed {removed}, expected {_EXPIRED}")
    ctx.advance(1)
    return {
        "first_us": statistics.median(firsts) * 1e6,
        "full_s": full,
        "per_thread_us": full / live * 1e6,
        "cleanup_us": statistics.median(cleanups) * 1e6,
        "first_peak": _peak(lambda: _first_page(store)),
        "full_peak": _peak(lambda: _count_all(store)),
        "list_peak": _peak(store.list_threads),
    }


def run(ctx: Context) -> Section:
    """Measure P4 (on a private redis-server)."""
    sec = Section(
        "P4",
        "Listing and cleanup: 10k vs 1M threads in the index",
        ["operation", "10k threads", "1M threads", "1M / 10k"],
    )
    results: dict[int, dict[str, float]] = {}
    with private_redis() as server:
        for live in (10_000, 1_000_000):
            ctx.start(f"P4 {live:,} threads", 4)
            store = RedisCheckpointer.from_url(server.url, namespace=f"bench-p4-{os.getpid()}")
            _fill(server.url, store.namespace, live, _EXPIRED, "r0")
            ctx.advance(1)
            results[live] = _measure(ctx, store, live, server.url)
            store.drop_namespace()
            store.close()
    small, big = results[10_000], results[1_000_000]
    rows = [
        ("list_threads first page (500 ids), p50", "first_us", fmt_us),
        ("iter_threads, whole index: per thread", "per_thread_us", lambda v: f"{v:.2f} µs"),
        ("iter_threads, whole index: total", "full_s", lambda v: f"{v:.2f} s"),
        ("cleanup_expired of 10k expired", "cleanup_us", fmt_us),
        ("peak memory, first page (tracemalloc)", "first_peak", _kib),
        ("peak memory, whole iteration (tracemalloc)", "full_peak", _kib),
        ("for contrast: list_threads() holding every id", "list_peak", _kib),
    ]
    for name, key, fmt in rows:
        sec.add(**{"operation": name, "10k threads": fmt(small[key]), "1M threads": fmt(big[key]),
                   "1M / 10k": f"{big[key] / small[key]:.2f}x"})  # fmt: skip
    for name, key in (
        ("first page, 1M within 20% of 10k", "first_us"),
        ("iteration per thread, 1M within 20% of 10k", "per_thread_us"),
        ("cleanup of 10k expired, 1M within 20% of 10k", "cleanup_us"),
        ("peak memory of a whole iteration, 1M within 20% of 10k", "full_peak"),
    ):
        sec.target(name, big[key] / small[key], 1.2)
    sec.notes.append(
        f"Each index also holds {_EXPIRED:,} expired entries (skipped by listing, removed by "
        "cleanup; refilled before each of 5 cleanup runs). Times are medians (first page: "
        "30-100 runs, whole index: 15 runs at 10k, 3 at 1M). Peaks are measured after one "
        "untraced pass, so CPython's free lists (bounded) are already filled."
    )
    return sec


def _kib(value: float) -> str:
    return f"{value / 1024:.0f} KiB"
