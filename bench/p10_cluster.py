"""P10: per-operation cost of the store on one server vs a Redis Cluster (3 + 3 nodes).

The same operations, interleaved, on:

- ``single (1 index)``: one server, a namespace in the single-index layout of earlier
  releases (``ns:index``), the baseline;
- ``single (sharded)``: one server, the sharded layout every new namespace gets (16 shards);
- ``cluster``: a private Redis Cluster, 3 primaries + 3 replicas, sharded layout;
- ``cluster, replica_acks=1``: the same with ``WAIT 1`` after every write.

Operations: ``save_state`` and ``load_state`` of a 4 KB snapshot, ``delete_thread``,
``save_many`` of 100 snapshots, one listing page of 500 (of 2,000 threads) and
``cleanup_expired`` with nothing expired. Ratios are against ``single (1 index)``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import partial

from agents_persistence import RedisCheckpointer
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology

from bench.common import Context, Section, fmt_us, interleaved, ratio, snapshot

__all__ = ["run"]

_VARIANTS = ("single (1 index)", "single (sharded)", "cluster", "cluster, replica_acks=1")


def _prepare(store: RedisCheckpointer, threads: int) -> None:
    state = snapshot(512)
    for i in range(0, threads, 500):
        store.save_many([store.prepare(f"l{j}", state) for j in range(i, min(threads, i + 500))])


def run(ctx: Context) -> Section:
    """Measure P10."""
    sec = Section(
        "P10",
        "Store operations: one server vs Redis Cluster (3 primaries + 3 replicas)",
        ["operation", "variant", "p50", "p99", "vs single (1 index)"],
    )
    ns = f"bench-p10-{os.getpid()}"
    with RedisClusterTopology() as cluster:
        legacy = RedisCheckpointer.from_url(ctx.redis_url, namespace=f"{ns}-legacy")
        legacy.client.zadd(f"{ns}-legacy:index", {"seed": float("inf")})  # an older namespace
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
            ctx.start("P10", 6 * 4 * n)
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
            sec.notes.append(
                "The cluster runs on the same 2 vCPUs as the client: its 6 nodes share them, "
                "so these are per-operation costs (round trips, routing), not capacity."
            )
        finally:
            for store in stores.values():
                store.drop_namespace()
                store.close()
    return sec
