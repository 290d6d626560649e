"""How long one command holds Redis: a large ``save_many`` and one listing page.

Redis runs one command (a whole MULTI/EXEC, a whole script) at a time, so the longest
single command is the longest every other client waits. A probe in another process PINGs
on its own connection in a loop; its longest round trip while the operation runs is that
wait (plus the machine's noise: the idle baseline line shows it).

::

    .venv/bin/python -m bench.blocking 30000            # as the store writes (chunked)
    .venv/bin/python -m bench.blocking 30000 unchunked  # one MULTI/EXEC for everything

Measured here (2 vCPU, loaded by other tests; Redis 7.0.15): 30,000 saves in one EXEC held
Redis 0.76-1.4 s; in chunks of 500, 28-44 ms (idle noise 5-8 ms). A page of 100,000 ids
168-407 ms, of 10,000 20-47 ms, of 500 5-8 ms (the single-index layout, before pages were
capped at ``MAX_PAGE_SIZE``; a page of the sharded layout is one script call per shard it
reads from, one request).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from itertools import islice
from multiprocessing.synchronize import Event

import redis
from agents_persistence import RedisCheckpointer
from agents_persistence.base import MAX_PAGE_SIZE
from agents_persistence.tasks.devtools.redis_server import RedisServer

from bench.p4_listing import plant
from tests.support import sample_state

__all__ = ["main"]


def _probe(url: str, go: Event, stop: Event, out: mp.Queue[float]) -> None:
    client = redis.Redis.from_url(url)
    client.ping()
    go.wait()
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        worst = max(worst, time.perf_counter() - started)
    out.put(worst)


def _probed(url: str, operation: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds of ``operation``, longest PING round trip meanwhile)."""
    go, stop = mp.Event(), mp.Event()
    out: mp.Queue[float] = mp.Queue()
    probe = mp.Process(target=_probe, args=(url, go, stop, out))
    probe.start()
    time.sleep(0.3)
    go.set()
    time.sleep(0.05)
    started = time.perf_counter()
    operation()
    wall = time.perf_counter() - started
    stop.set()
    worst: float = out.get()
    probe.join()
    return wall, worst


def main(argv: list[str]) -> None:
    """Print the longest PING round trip during each measured operation."""
    count = int(argv[0]) if argv else 30_000
    if len(argv) > 1 and argv[1] == "unchunked":
        import agents_persistence.redis_ops as ops

        ops.CHUNK_SAVES, ops.CHUNK_BYTES = 10**9, 10**12
    with RedisServer() as server:
        store = RedisCheckpointer.from_url(server.url, namespace="blocking")
        store.save_state("warm", sample_state("warm"))
        _, idle = _probed(server.url, lambda: time.sleep(0.5))
        print(f"idle 0.5 s: longest PING {idle * 1000:.1f} ms")
        saves = [store.prepare(f"t{i}", sample_state(f"t{i}")) for i in range(count)]
        for label in ("written", "duplicate"):
            wall, worst = _probed(server.url, lambda: store.save_many(saves))
            print(f"save_many {count} ({label}): wall {wall * 1000:.0f} ms, "
                  f"longest PING {worst * 1000:.1f} ms")  # fmt: skip
        plant(server.url, store.keys, 100_000, 0, "x")  # index entries, in the store's layout
        live, _ = store.count_threads()
        print(f"index: {live:,} live threads ({store.keys.shard_count} shard(s))")
        for size in (500, 2_000, MAX_PAGE_SIZE):
            wall, worst = _probed(
                server.url,
                lambda: list(islice(store.iter_threads(page_size=size), size)),  # noqa: B023
            )
            print(f"page of {size}: wall {wall * 1000:.0f} ms, longest PING {worst * 1000:.1f} ms")
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
