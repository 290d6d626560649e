"""P10: per-operation cost of the store on one server vs a Redis Cluster (3 + 3 nodes).

The same operations, interleaved, on:

- ``single (1 index)``: one server, a namespace in the single-index layout of earlier
  releases (``ns:index``), the baseline;
- ``single (sharded)``: one server, the sharded layout every new namespace gets (16 shards);
- ``cluster``: a private Redis Cluster, 3 primaries + 3 replicas, sharded layout;
- ``cluster, replica_acks=1``: the same with ``WAIT 1`` after every write.

Operations: ``save_state`` and ``load_state`` of a 4 KB snapshot, ``delete_thread``,
``save_many`` of 100 snapshots, one listing page of 500 (of 2,000 threads),
``cleanup_expired`` with nothing expired, and ``cleanup_expired`` of 500 expired entries
(planted with a short TTL before each timed call, waited for until all 500 count as expired;
a few rounds, the variants in turn). Ratios are against ``single (1 index)``; the rows name
the cluster ÷ one-server (sharded) ratio too, the layout both run.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

from agents_persistence import RedisCheckpointer
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology

from bench.common import Context, Section, fmt_us, interleaved, ratio, snapshot

__all__ = ["run"]

_VARIANTS = ("single (1 index)", "single (sharded)", "cluster", "cluster, replica_acks=1")
_EXPIRED = 500


def _timed_cleanups(
    ctx: Context, stores: dict[str, RedisCheckpointer], urls: dict[str, str], rounds: int
) -> dict[str, list[float]]:
    """Per variant, ``rounds`` timings (µs) of ``cleanup_expired()`` removing ``_EXPIRED``
    entries: planted by a store of the same namespace whose saves live 50 ms, and waited
    for (``count_threads`` reports them all expired) before the timed call."""
    taken: dict[str, list[float]] = {name: [] for name in stores}
    state = snapshot(512)
    for r in range(rounds):
        for name, store in stores.items():
            short = RedisCheckpointer.from_url(urls[name], namespace=store.namespace, ttl=0.05)
            try:
                short.save_many([short.prepare(f"x{r}-{j}", state) for j in range(_EXPIRED)])
            finally:
                short.close()
            deadline = time.monotonic() + 30
            while store.count_threads()[1] < _EXPIRED:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: planted entries did not expire in 30 s")
                time.sleep(0.01)
            t0 = time.perf_counter_ns()
            removed = store.cleanup_expired()
            taken[name].append((time.perf_counter_ns() - t0) / 1000)
            if removed != _EXPIRED:
                raise RuntimeError(f"{name}: cleanup removed {removed}, not {_EXPIRED}")
            ctx.advance(1)
    return taken


def _prepare(store: RedisCheckpointer, threads: int) -> None:
    state = snapshot(512)
    for i in range(0, threads, 500):
        store.save_many([store.prepare(f"l{j}", state) for j in range(i, min(threads, i + 500))])


def run(ctx: Context) -> Section:
    """Measure P10."""
    sec = Section(
        "P10",
        "Store operations: one server vs Redis Cluster (3 primaries + 3 replicas)",
        [
            "operation",
            "variant",
            "p50",
            "p99",
            "vs single (1 index)",
            "cluster ÷ single (sharded)",
        ],
    )
    ns = f"bench-p10-{os.getpid()}"
    with RedisClusterTopology() as cluster:
        legacy = RedisCheckpointer.from_url(ctx.redis_url, namespace=f"{ns}-legacy")
        legacy.client.zadd(f"{ns}-legacy:index", {"seed": float("inf")})  # an older namespace
        urls = {
            _VARIANTS[0]: ctx.redis_url, _VARIANTS[1]: ctx.redis_url,
            _VARIANTS[2]: cluster.url, _VARIANTS[3]: cluster.url,
        }  # fmt: skip
        stores = {
            _VARIANTS[0]: legacy,
            _VARIANTS[1]: RedisCheckpointer.from_url(ctx.redis_url, namespace=f"{ns}-sharded"),
            _VARIANTS[2]: RedisCheckpointer.from_url(cluster.url, namespace=ns),
            _VARIANTS[3]: RedisCheckpointer.from_url(
                cluster.url, namespace=f"{ns}-acks", replica_acks=1
            ),
        }
        try:
            state = snapshot(4 * 1024)
            batch_state = snapshot(1024)
            n = ctx.scale(200, 1000)
            ctx.start("P10", 6 * 4 * n + 4 * ctx.scale(7, 15))
            for store in stores.values():
                store.save_state("t", state)
                _prepare(store, 2000)
            batches = {
                name: [store.prepare(f"b{i}", batch_state) for i in range(100)]
                for name, store in stores.items()
            }
            ops: dict[str, Callable[[RedisCheckpointer, str], Callable[[], object]]] = {
                "save_state 4 KB": lambda s, _: partial(s.save_state, "t", state),
                "load_state 4 KB": lambda s, _: partial(s.load_state, "t"),
                "delete_thread": lambda s, _: partial(s.delete_thread, "gone"),
                "save_many 100 x 1 KB": lambda s, name: partial(s.save_many, batches[name]),
                "list: first page of 500 (2,000 threads)": lambda s, _: (
                    lambda: list(itertools.islice(s.iter_threads(page_size=500), 500))
                ),
                "cleanup_expired (nothing expired)": lambda s, _: s.cleanup_expired,
            }
            for op, make in ops.items():
                fewer = n if not op.startswith(("save_many", "list")) else max(20, n // 10)
                stats = interleaved(
                    {name: make(store, name) for name, store in stores.items()},
                    fewer,
                    tick=ctx.advance,
                )
                base = stats[_VARIANTS[0]].p50_us
                for name in _VARIANTS:
                    st = stats[name]
                    sec.add(**{
                        "operation": op, "variant": name, "p50": fmt_us(st.p50_us),
                        "p99": fmt_us(st.p99_us), "vs single (1 index)": ratio(st.p50_us, base),
                        "_p50_us": st.p50_us, "_p99_us": st.p99_us,
                    })  # fmt: skip
            rounds = ctx.scale(7, 15)
            taken = _timed_cleanups(ctx, stores, urls, rounds)
            op = f"cleanup_expired ({_EXPIRED} expired)"
            base = statistics.median(taken[_VARIANTS[0]])
            for name in _VARIANTS:
                p50 = statistics.median(taken[name])
                sec.add(**{
                    "operation": op, "variant": name, "p50": fmt_us(p50),
                    "p99": fmt_us(max(taken[name])), "vs single (1 index)": ratio(p50, base),
                    "_p50_us": p50, "_p99_us": max(taken[name]),
                })  # fmt: skip
            sec.notes.append(
                f"cleanup_expired ({_EXPIRED} expired): {rounds} timed calls per variant "
                "(p99 column: the slowest)."
            )
            sharded = {
                r["operation"]: r["_p50_us"] for r in sec.rows if r["variant"] == _VARIANTS[1]
            }
            for row in sec.rows:
                row["cluster ÷ single (sharded)"] = (
                    ratio(row["_p50_us"], sharded[row["operation"]])
                    if row["variant"].startswith("cluster")
                    else ""
                )
            sec.notes.append(
                "The cluster runs on the same 2 vCPUs as the client: its 6 nodes share them, "
                "so these are per-operation costs (round trips, routing), not capacity."
            )
        finally:
            for store in stores.values():
                store.drop_namespace()
                store.close()
    return sec
