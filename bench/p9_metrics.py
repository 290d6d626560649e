"""P9: what metrics cost — P1's hand-off and P2's drain with metrics on and off.

- Hand-off (P1's durable and buffered ``save_state``, 4 KB, a new thread each): recording on
  (the hand-off counter) against off (:func:`agents_persistence.metrics.disable`),
  paired call by call (on-off, then off-on, ...).
- Drain (P2's: one worker ``-c 2``, buffered batches of ≤100, 4 KB): on is
  ``AGENTS_PERSISTENCE_METRICS_PORT`` set (multiprocess files, the endpoint, and a scrape
  every second, each reading Redis and the broker for its gauges); off is
  ``celery -A bench.metrics_off_app`` (recording disabled, no endpoint). On and off
  alternate round by round, best of each kept.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import urllib.request

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer, metrics
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.tasks.devtools.binaries import free_port

from bench.common import Context, Section, Stats, fmt_us, snapshot
from bench.p2_throughput import Run, _check, _env, _measure, _settled, _wait
from bench.servers import private_redis, worker

__all__ = ["run"]

_SIZE = 4 * 1024
_WARM = 300  # warm-up snapshots (3 batches) stored before the clock starts


def _handoff(ctx: Context, sec: Section) -> None:
    ns = f"bench-p9-{os.getpid()}"
    settings = Settings(
        redis_url=ctx.redis_url, namespace=ns, queue=f"{ns}-q", buffer_max_snapshots=100_000
    )
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    durable = CeleryCheckpointer(store, app, settings=settings, mode="durable")
    buffered = CeleryCheckpointer(store, app, settings=settings, mode="buffered")
    publisher = buffered._publisher
    assert publisher is not None
    client = redis.Redis.from_url(ctx.redis_url)
    state = snapshot(_SIZE)
    ids = itertools.count()

    def paired(client_: CeleryCheckpointer, n: int) -> dict[bool, Stats]:
        """Each iteration times one save with recording on and one with it off, in
        alternating order (on-off, off-on, ...), so load and queue growth fall on both."""
        samples: dict[bool, list[int]] = {True: [], False: []}
        perf = time.perf_counter_ns
        for i in range(n):
            for on in (True, False) if i % 2 == 0 else (False, True):
                if on:
                    metrics.enable()
                else:
                    metrics.disable()
                t0 = perf()
                client_.save_state(f"h{next(ids)}", state)
                samples[on].append(perf() - t0)
            if i % 500 == 499:
                drain()
                ctx.advance(1000)
        return {on: Stats.of(got) for on, got in samples.items()}

    def drain() -> None:
        publisher.flush(120)
        client.delete(settings.queue)

    n = ctx.scale(2000, 8000)
    ctx.start("P9 hand-off", 4 * n)
    stats: dict[str, dict[bool, Stats]] = {}
    try:
        for mode, checkpointer in (("durable", durable), ("buffered", buffered)):
            for _ in range(20):  # warm-up
                checkpointer.save_state(f"h{next(ids)}", state)
            stats[mode] = paired(checkpointer, n)
            drain()
    finally:
        metrics.enable()
        buffered.close(60)
        durable.close(60)
        client.delete(settings.queue)
        client.close()
        store.drop_namespace()
        store.close()
    for mode in ("durable", "buffered"):
        on, off = stats[mode][True], stats[mode][False]
        sec.add(**{
            "measure": f"P1 hand-off p50, {mode}, 4 KB", "metrics on": fmt_us(on.p50_us),
            "metrics off": fmt_us(off.p50_us), "on / off": f"{on.p50_us / off.p50_us:.3f}",
        })  # fmt: skip
        sec.target(f"P1 {mode}: p50 with metrics ≤ 1.05x without", on.p50_us / off.p50_us, 1.05)


def _scraper(port: int, stop: threading.Event, count: list[int]) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
                count[0] += 1
            except OSError:
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _drain(
    ctx: Context, url: str, state: AgentStateSnapshot, n: int, tag: str, *, on: bool
) -> Run:
    settings = Settings(redis_url=url, namespace=f"bench-p9-{tag}", queue=f"bench-p9-{tag}-q")
    store = RedisCheckpointer.from_settings(settings)
    client = redis.Redis.from_url(url)
    app = create_app(settings, store=store)
    producer = CeleryCheckpointer(store, app, settings=settings, mode="buffered")
    warm = {f"w{i}": producer.save_state(f"w{i}", state).version for i in range(_WARM)}
    versions = {f"d{i}": producer.save_state(f"d{i}", state).version for i in range(n)}
    assert producer._publisher is not None
    producer._publisher.flush(300)
    env = _env(settings)
    port = free_port()
    if on:
        env["AGENTS_PERSISTENCE_METRICS_PORT"] = str(port)
    stop, scrapes = threading.Event(), [0]
    with worker(
        env, 2, settings.queue, app="agents_persistence.tasks" if on else "bench.metrics_off_app"
    ) as proc:
        scraper = _scraper(port, stop, scrapes) if on else None
        t0 = _wait(lambda: len(store.stored_versions(list(warm))) == _WARM, 120, 0.001)
        done = _measure(proc.pid, client)
        last = [f"d{n - 1}"]
        t1 = _wait(
            lambda: bool(store.stored_versions(last)) and _settled(client, settings.queue), 600
        )
        result = done(n, t1 - t0)
        stop.set()
        if scraper is not None:
            scraper.join(10)
            if not scrapes[0] and t1 - t0 > 2:
                raise RuntimeError("P9: the worker's metrics endpoint never answered")
    ctx.advance(n)
    _check(store, warm | versions, app.dead_letters.count())
    producer.close()
    store.drop_namespace()
    client.close()
    store.close()
    return result


def run(ctx: Context) -> Section:
    """Measure P9."""
    sec = Section("P9", "Metrics cost: P1 and P2 with metrics on and off", [
        "measure", "metrics on", "metrics off", "on / off",
    ])  # fmt: skip
    _handoff(ctx, sec)
    n, rounds = ctx.scale(5000, 20000), ctx.scale(2, 3)
    state = snapshot(_SIZE)
    runs: dict[bool, list[Run]] = {True: [], False: []}
    ctx.start("P9 drain", 2 * rounds * n)
    with private_redis() as server:
        for r in range(rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                tag = f"{os.getpid()}-{r}-{'on' if on else 'off'}"
                runs[on].append(_drain(ctx, server.url, state, n, tag, on=on))
    best_on = max(runs[True], key=lambda x: x.rate)
    best_off = max(runs[False], key=lambda x: x.rate)
    sec.add(**{
        "measure": "P2 drain, snapshots/s (-c 2, batches of ≤100, 4 KB)",
        "metrics on": f"{best_on.rate:,.0f}", "metrics off": f"{best_off.rate:,.0f}",
        "on / off": f"{best_on.rate / best_off.rate:.3f}",
    })  # fmt: skip
    sec.add(**{
        "measure": "P2 drain, worker CPU / snapshot",
        "metrics on": f"{best_on.worker_cpu / best_on.count * 1e6:.0f} µs",
        "metrics off": f"{best_off.worker_cpu / best_off.count * 1e6:.0f} µs",
        "on / off": f"{best_on.worker_cpu / max(best_off.worker_cpu, 1e-9):.3f}",
    })  # fmt: skip
    sec.target(
        "P2 drain: worker CPU per snapshot with metrics ≤ 1.05x without",
        (best_on.worker_cpu / best_on.count) / max(best_off.worker_cpu / best_off.count, 1e-12),
        1.05,
    )
    sec.target(
        "P2 drain: throughput with metrics ≥ 0.95x without (shown: off / on)",
        best_off.rate / best_on.rate,
        1.0 / 0.95,
        f"{best_on.rate / best_off.rate:.3f}",
    )
    sec.notes.append(
        f"Hand-off: {ctx.scale(2000, 8000):,} pairs of saves per mode, one with recording on "
        "and one off in alternating order. Drain: best of "
        f"{rounds} alternating rounds of {n:,} snapshots each; on = METRICS_PORT set "
        "(multiprocess mode, the endpoint, scraped every second); off = recording disabled. "
        "Every hand-off checked in the store. On a shared machine the worker's CPU per "
        "snapshot is the steadier figure; snapshots/s moves with what else runs."
    )
    return sec
