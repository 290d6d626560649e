"""P4: listing and cleanup with 10k and with 1M threads in the index.

The index (16 sorted sets scored by expiry, the sharded layout) is filled directly with
pipelined ``ZADD``s in a private ``redis-server``: listing and cleanup read only the index,
so the records themselves are left out. Each size holds N live threads plus 10k expired ones.

- first page: the first 500 ids from ``iter_threads(page_size=500)``.
- full iteration: every live id from ``iter_threads()``, counted, not kept.
- cleanup: ``cleanup_expired()`` removing the 10k expired entries.

Both indexes are measured in :data:`RUNS` interleaved runs (10k, 1M, then 1M, 10k...): a
ratio is the median of the runs' ratios, and every run's is shown, as one machine's noise
moves a single run's figure far more than the index size does.

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

__all__ = ["RUNS", "plant", "run"]

_EXPIRED = 10_000
_PAGE = 500
#: Interleaved runs over both indexes; each ratio is the median of the runs'.
RUNS = 5
#: Cleanups per run (the expired entries planted afresh before each): the median counts.
_CLEANUPS = 3

Timing = dict[str, float]


def plant(url: str, keys: Keys, live: int, expired: int, tag: str) -> None:
    """Plant ``live`` + ``expired`` index entries directly, each in its thread's index key
    of ``keys``'s layout (saving 1M threads would take minutes and measure nothing P4 is
    about)."""
    client = redis.Redis.from_url(url)
    now_ms = int(time.time() * 1000)
    future, past = now_ms + 86_400_000, now_ms - 60_000
    chunk = 10_000

    def add(entries: dict[str, float]) -> None:  # each entry into its thread's shard
        shards: dict[str, dict[str, float]] = {}
        for tid, score in entries.items():
            shards.setdefault(keys.index_of(keys.shard(tid)), {})[tid] = score
        for index, part in shards.items():
            pipe.zadd(index, part)

    pipe = client.pipeline(transaction=False)
    for start in range(0, live, chunk):
        add({f"thread-{i:09d}": future for i in range(start, min(live, start + chunk))})
        if len(pipe) >= 160:
            pipe.execute()
    for start in range(0, expired, chunk):
        stop = min(expired, start + chunk)
        add({f"gone-{tag}-{i:09d}": past - i for i in range(start, stop)})
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


def _once(ctx: Context, store: RedisCheckpointer, live: int, url: str, rep: int) -> Timing:
    """One run over one index: first page (median of many), the whole iteration, and the
    cleanup of the index's expired entries (median of a few, planted afresh before each)."""
    firsts = []
    _first_page(store)  # warm-up: script cache, connection
    for _ in range(ctx.scale(20, 60)):
        t0 = time.perf_counter()
        _first_page(store)
        firsts.append(time.perf_counter() - t0)
    fulls = []
    for _ in range(1 if live > 100_000 else ctx.scale(3, 5)):
        t0 = time.perf_counter()
        counted = _count_all(store)
        fulls.append(time.perf_counter() - t0)
        if counted != live:
            raise RuntimeError(f"P4: iter_threads yielded {counted} ids, expected {live}")
    cleanups = []
    for i in range(_CLEANUPS):
        if rep or i:
            plant(url, store.keys, 0, _EXPIRED, f"r{rep}-{i}")
        t0 = time.perf_counter()
        removed = store.cleanup_expired()
        cleanups.append(time.perf_counter() - t0)
        if removed != _EXPIRED:
            raise RuntimeError(f"P4: cleanup removed {removed}, expected {_EXPIRED}")
    ctx.advance(1)
    return {
        "first_us": statistics.median(firsts) * 1e6,
        "per_thread_us": statistics.median(fulls) / live * 1e6,
        "full_s": statistics.median(fulls),
        "cleanup_us": statistics.median(cleanups) * 1e6,
    }


def _peaks(store: RedisCheckpointer) -> Timing:
    return {
        "first_peak": _peak(lambda: _first_page(store)),
        "full_peak": _peak(lambda: _count_all(store)),
        "list_peak": _peak(store.list_threads),
    }


def run(ctx: Context) -> Section:
    """Measure P4 (on a private redis-server): both indexes in one server, measured in
    :data:`RUNS` interleaved runs (the order alternating), each ratio the median of the
    runs' ratios."""
    sec = Section(
        "P4",
        f"Listing and cleanup: 10k vs 1M threads in the index ({RUNS} interleaved runs)",
        ["operation", "10k threads", "1M threads", "1M / 10k", "each run (1M / 10k)"],
    )
    sizes = (10_000, 1_000_000)
    runs: dict[int, list[Timing]] = {live: [] for live in sizes}
    with private_redis() as server:
        stores = {
            live: RedisCheckpointer.from_url(
                server.url, namespace=f"bench-p4-{os.getpid()}-{live}"
            )
            for live in sizes
        }
        try:
            ctx.start("P4 planting the indexes", 2)
            for live, store in stores.items():
                plant(server.url, store.keys, live, _EXPIRED, "r0")
                ctx.advance(1)
            ctx.start(f"P4 {RUNS} runs x 2 indexes", 2 * RUNS + 2)
            for rep in range(RUNS):
                for live in sizes if rep % 2 == 0 else sizes[::-1]:
                    runs[live].append(_once(ctx, stores[live], live, server.url, rep))
            peaks = {live: _peaks(store) for live, store in stores.items()}
            ctx.advance(2)
        finally:
            for store in stores.values():
                store.drop_namespace()
                store.close()
    small, big = runs[10_000], runs[1_000_000]

    def ratios(key: str) -> list[float]:
        return [b[key] / s[key] for s, b in zip(small, big, strict=True)]

    def med(timings: list[Timing], key: str) -> float:
        return statistics.median(t[key] for t in timings)

    timed = [
        ("list_threads first page (500 ids), p50", "first_us", fmt_us),
        ("iter_threads, whole index: per thread", "per_thread_us", lambda v: f"{v:.2f} µs"),
        ("iter_threads, whole index: total", "full_s", lambda v: f"{v:.2f} s"),
        ("cleanup_expired of 10k expired", "cleanup_us", fmt_us),
    ]
    for name, key, fmt in timed:
        each = ratios(key)
        sec.add(**{
            "operation": name, "10k threads": fmt(med(small, key)),
            "1M threads": fmt(med(big, key)), "1M / 10k": f"{statistics.median(each):.2f}x",
            "each run (1M / 10k)": " ".join(f"{r:.2f}" for r in each),
            "_runs": each,
        })  # fmt: skip
    for name, key in (
        ("peak memory, first page (tracemalloc)", "first_peak"),
        ("peak memory, whole iteration (tracemalloc)", "full_peak"),
        ("for contrast: list_threads() holding every id", "list_peak"),
    ):
        lo, hi = peaks[10_000][key], peaks[1_000_000][key]
        sec.add(**{"operation": name, "10k threads": _kib(lo), "1M threads": _kib(hi),
                   "1M / 10k": f"{hi / lo:.2f}x", "each run (1M / 10k)": "(once)"})  # fmt: skip
    for name, key in (
        (f"first page, 1M within 20% of 10k (median of {RUNS} runs)", "first_us"),
        (f"iteration per thread, 1M within 20% of 10k (median of {RUNS} runs)", "per_thread_us"),
        (f"cleanup of 10k expired, 1M within 20% of 10k (median of {RUNS} runs)", "cleanup_us"),
    ):
        each = ratios(key)
        sec.target(name, statistics.median(each), 1.2,
                   "runs: " + ", ".join(f"{r:.2f}" for r in each))  # fmt: skip
    sec.target(
        "peak memory of a whole iteration, 1M within 20% of 10k",
        peaks[1_000_000]["full_peak"] / peaks[10_000]["full_peak"], 1.2,
    )  # fmt: skip
    sec.notes.append(
        f"Both indexes live in one redis-server; each also holds {_EXPIRED:,} expired entries "
        "(skipped by listing, removed by cleanup; planted afresh before each cleanup). "
        f"{RUNS} runs, alternating which index goes first; in each run the first page is the "
        "median of 20-60 calls, the whole iteration one pass at 1M (median of 3-5 at 10k), "
        f"the cleanup the median of {_CLEANUPS} calls. The 1M / 10k column is the median of "
        "the runs' ratios. Peaks are measured once, after one untraced pass, so CPython's free "
        "lists (bounded) are already filled; a page merges what it fetched from every shard "
        "(~1.5 pages, more when a shard has to be fetched again), so the peak stays within a "
        "few pages whatever the index size, and the longer iteration meets more of the pages "
        "that fetch again."
    )
    return sec


def _kib(value: float) -> str:
    return f"{value / 1024:.0f} KiB"
