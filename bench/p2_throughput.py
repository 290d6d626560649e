"""P2: persisted snapshots per second through one ``celery -A agents_persistence.tasks worker -c
2``.

- ``drain``: N hand-offs (buffered mode: batches of up to 100 per message) are queued
  first, behind 200 that warm the worker up; then the worker starts. Time from the warm-up
  snapshots stored to the last snapshot in the store (every thread's version checked:
  nothing lost, nothing dead-lettered).
- ``end to end``: the worker already running, a producer hands off N more and ``flush()``
  returns when all are durable; time from the first hand-off.
- ``no-op floor``: one message per snapshot (the same 4 KB payload, the same reliability
  settings), a task that does nothing (``celery -A bench.noop_app worker -c 2``): the most
  a one-message-per-save design could reach (timed after the first 50 messages).
- ``limit``: a pipelined redis-py loop (SET + ZADD into the thread's index shard, keys laid
  out as the store's, 100 per round trip), no Celery at all;
  and ``RedisCheckpointer.save_many`` of 100 in-process (the worker's core path).

Ours are measured per variant (``BENCH_P2_POOLS``: worker pools, task messages zstd or
plain JSON). Floor and ours alternate (two rounds in a full run) and the best round of each
counts, so load from elsewhere on the machine weighs on all alike. CPU per snapshot comes
from ``/proc`` (the worker's process group, and its main process alone) and Redis's
``INFO cpu``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.config.settings import Settings
from agents_persistence.keys import Keys
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.tasks.client.sender import TaskSender
from agents_persistence.tasks.protocol.messages import save_message

from bench.common import Context, Section, snapshot
from bench.noop_app import NOOP_TASK
from bench.servers import private_redis, worker

__all__ = ["run"]

_SIZE = 4 * 1024
_SER = AgentStateSnapshot.__pydantic_serializer__
_TICK = os.sysconf("SC_CLK_TCK")
#: Snapshots (ours: two batches) and messages (the floor) that warm a worker up, unmeasured.
_WARM = 200
_WARM_MESSAGES = 50


@dataclass
class Run:
    """One measured run: how many snapshots, how long, and the CPU it took."""

    count: int
    seconds: float
    worker_cpu: float = 0.0
    redis_cpu: float = 0.0
    main_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _env(settings: Settings) -> dict[str, str]:
    return {
        "AGENTS_PERSISTENCE_REDIS_URL": settings.redis_url.get_secret_value(),
        "AGENTS_PERSISTENCE_NAMESPACE": settings.namespace,
        "AGENTS_PERSISTENCE_QUEUE": settings.queue,
    }


def _wait(predicate: Callable[[], bool], timeout: float, poll: float = 0.002) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        time.sleep(poll)
    raise TimeoutError(f"P2: condition not reached within {timeout}s")


def _group_cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the live processes in process group ``pgid``: all of
    them, and the group leader (the worker's main process) alone."""
    total = main = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime stime
            ticks = int(fields[11]) + int(fields[12])
            total += ticks
            main += ticks if int(entry) == pgid else 0
    return total / _TICK, main / _TICK


def _measure(pgid: int, client: redis.Redis) -> Callable[[int, float], Run]:
    """Start counting the worker's and Redis's CPU; the result makes the :class:`Run`."""
    (cpu0, main0), rcpu0 = _group_cpu(pgid), _redis_cpu(client)

    def done(count: int, seconds: float) -> Run:
        (cpu, main), rcpu = _group_cpu(pgid), _redis_cpu(client)
        return Run(count, seconds, cpu - cpu0, rcpu - rcpu0, main - main0)

    return done


def _settled(client: redis.Redis, queue: str) -> bool:
    """Nothing left in the queue and nothing in flight: every message taken was acknowledged
    (acks late: after its writes)."""
    return int(client.llen(queue)) == 0 and int(client.hlen("unacked")) == 0


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _ours(
    ctx: Context, url: str, state: AgentStateSnapshot, n: int, tag: str, *, variant: str
) -> tuple[Run, Run]:
    pool, plain, batch = _parse(variant)
    settings = Settings(
        redis_url=url,
        namespace=f"bench-p2-{tag}",
        queue=f"bench-p2-{tag}-q",
        batch_max_snapshots=batch or Settings.model_fields["batch_max_snapshots"].default,
    )
    store = RedisCheckpointer.from_settings(settings)
    client = redis.Redis.from_url(url)  # to watch the queue and the in-flight messages
    app = create_app(settings, store=store)
    if plain:  # the messages as they were before zstd (workers read both)
        app.conf.task_compression = None
    producer = CeleryCheckpointer(store, app, settings=settings, mode="buffered")
    ctx.start(f"P2 ours ({tag})", 3 * n)
    # Warm-up batches first (the queue is FIFO): the clock and the CPU counters start once
    # they are stored, so imports, connections and script loads in the worker count for none.
    warm = {f"w{i}": producer.save_state(f"w{i}", state).version for i in range(_WARM)}
    versions = {f"d{i}": producer.save_state(f"d{i}", state).version for i in range(n)}
    assert producer._publisher is not None
    producer._publisher.flush(300)
    ctx.advance(n)
    with worker(_env(settings), 2, settings.queue, pool=pool) as proc:
        pgid = proc.pid
        t0 = _wait(lambda: len(store.stored_versions(list(warm))) == _WARM, 120, 0.005)
        done = _measure(pgid, client)
        last = [f"d{n - 1}"]  # taken last (FIFO): once it is stored and nothing is in flight,
        t1 = _wait(  # every message was acknowledged, after its writes
            lambda: bool(store.stored_versions(last)) and _settled(client, settings.queue),
            600,
            0.01,  # polls that load Redis as little as possible while the worker drains
        )
        drain = done(n, t1 - t0)
        ctx.advance(n)
        _check(store, warm | versions, app.dead_letters.count())
        more: dict[str, int] = {}
        done = _measure(pgid, client)
        t0 = time.perf_counter()
        for i in range(n):
            more[f"e{i}"] = producer.save_state(f"e{i}", state).version
        producer.flush(600)
        e2e = done(n, time.perf_counter() - t0)
        ctx.advance(n)
        _check(store, more, app.dead_letters.count())
    producer.close()
    client.close()
    store.close()
    return drain, e2e


def _floor(ctx: Context, url: str, state: AgentStateSnapshot, n: int, tag: str) -> Run:
    settings = Settings(redis_url=url, namespace=f"bench-p2-{tag}", queue=f"bench-p2-{tag}-noop")
    store = RedisCheckpointer.from_settings(settings)
    client = redis.Redis.from_url(url)  # to watch the queue drain
    app = create_app(settings, store=store)
    ctx.start(f"P2 no-op floor ({tag})", n)
    sender = TaskSender(app, settings.queue, {"max_retries": 3})
    message = save_message(settings.namespace, store.prepare("floor", state))
    for _ in range(n):
        sender.send(NOOP_TASK, message, "{...}")
    with worker(_env(settings), 2, settings.queue, app="bench.noop_app") as w:
        # As for ours: the first messages warm the worker up; the clock starts after them.
        _wait(lambda: int(client.llen(settings.queue)) <= n - _WARM_MESSAGES, 120, 0.001)
        done = _measure(w.pid, client)
        left = int(client.llen(settings.queue))
        t0 = time.perf_counter()
        t1 = _wait(lambda: _settled(client, settings.queue), 600)
        run = done(left, t1 - t0)
    ctx.advance(n)
    client.close()
    store.close()
    return run


def _limits(ctx: Context, url: str, state: AgentStateSnapshot, n: int) -> tuple[Run, Run]:
    store = RedisCheckpointer.from_url(url, namespace="bench-p2-core")
    client = redis.Redis.from_url(url)  # the raw-write baseline: no store in between
    ctx.start("P2 limits", 2 * n)
    body = _SER.to_json(state)
    keys = Keys("bench-p2-raw")  # the store's key layout: each thread's shard index
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 100)):
            tid = f"r{i}"
            pipe.set(keys.thread(tid), body)
            pipe.zadd(keys.index_of(keys.shard(tid)), {tid: 1.0})
        pipe.execute()
    raw = Run(n, time.perf_counter() - t0)
    ctx.advance(n)
    saves = [store.prepare(f"m{i}", state) for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        store.save_many(saves[start : start + 100])
    core = Run(n, time.perf_counter() - t0)
    ctx.advance(n)
    client.close()
    store.close()
    return raw, core


def _variants() -> list[str]:
    """What to measure: ``BENCH_P2_POOLS``, comma-separated ``-P`` values, each optionally
    with ``/plain`` (task messages uncompressed, as before zstd) and ``/<n>`` (batches of
    at most n snapshots); default: the prefork pool with zstd messages and with plain ones."""
    raw = os.environ.get("BENCH_P2_POOLS", "prefork,prefork/plain")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _parse(variant: str) -> tuple[str, bool, int | None]:
    """``pool[/plain][/<batch size>]``: the pool, plain messages or not, the batch size."""
    pool, *options = variant.split("/")
    sizes = [int(o) for o in options if o.isdigit()]
    return pool, "plain" in options, sizes[0] if sizes else None


def _label(variant: str) -> str:
    pool, plain, batch = _parse(variant)
    size = batch or Settings.model_fields["batch_max_snapshots"].default
    return f"-P {pool}, {'plain JSON' if plain else 'zstd'} messages, batches of ≤{size}"


def run(ctx: Context) -> Section:
    """Measure P2 (always on a private redis-server)."""
    sec = Section(
        "P2",
        "Throughput: persisted snapshots/s, one worker -c 2 (4 KB snapshots)",
        ["variant", "snapshots", "seconds", "snapshots/s", "vs no-op floor", "vs raw write",
         "worker CPU / snapshot", "of which main process", "Redis CPU / snapshot"],
    )  # fmt: skip
    n, floor_n, rounds = ctx.scale(5000, 20000), ctx.scale(1000, 3000), ctx.scale(1, 2)
    state = snapshot(_SIZE)
    pools = _variants()
    floors: list[Run] = []
    drains: dict[str, list[Run]] = {pool: [] for pool in pools}
    e2es: dict[str, list[Run]] = {pool: [] for pool in pools}
    with private_redis() as server:
        for r in range(rounds):
            floors.append(_floor(ctx, server.url, state, floor_n, f"{os.getpid()}-{r}"))
            for pool in pools:
                tag = f"{os.getpid()}-{r}-{pool}"
                drain, e2e = _ours(ctx, server.url, state, n, tag.replace("/", "-"), variant=pool)
                drains[pool].append(drain)
                e2es[pool].append(e2e)
        raw, core = _limits(ctx, server.url, state, n)
    best: dict[str, Run] = {}
    for pool in pools:
        best[f"drain: {_label(pool)}"] = max(drains[pool], key=lambda x: x.rate)
        best[f"end to end: {_label(pool)}"] = max(e2es[pool], key=lambda x: x.rate)
    best |= {
        "no-op floor: 1 message per snapshot (prefork)": max(floors, key=lambda x: x.rate),
        "limit: pipelined redis-py SET+ZADD x100": raw,
        "core: save_many x100 in-process (prepared)": core,
    }
    floor = best["no-op floor: 1 message per snapshot (prefork)"].rate
    for name, got in best.items():
        sec.add(**{
            "variant": name, "snapshots": got.count, "seconds": f"{got.seconds:.2f}",
            "snapshots/s": f"{got.rate:,.0f}", "vs no-op floor": f"{got.rate / floor:.1f}x",
            "vs raw write": f"{got.rate / raw.rate:.2f}x",
            "worker CPU / snapshot": _per(got.worker_cpu, got.count),
            "of which main process": _per(got.main_cpu, got.count),
            "Redis CPU / snapshot": _per(got.redis_cpu, got.count), "_rate": got.rate,
        })  # fmt: skip
    for pool in pools:
        drain = best[f"drain: {_label(pool)}"]
        e2e = best[f"end to end: {_label(pool)}"]
        sec.target(f"{_label(pool)}: drain ≥ 10x the no-op floor (shown: floor*10 / measured)",
                   10 * floor / drain.rate, 1.0, f"{drain.rate / floor:.1f}x")  # fmt: skip
        sec.target(f"{_label(pool)}: worker CPU per snapshot ≤ 30 µs (drain)",
                   drain.worker_cpu / drain.count * 1e6, 30.0)  # fmt: skip
        sec.target(f"{_label(pool)}: end to end ≥ 0.3x the raw write (shown: 0.3 / ratio)",
                   0.3 * raw.rate / e2e.rate, 1.0, f"{e2e.rate / raw.rate:.2f}x")  # fmt: skip
    sec.notes.append(
        f"Every hand-off checked in the store ({rounds * 2 * n * len(pools):,} in all): none "
        f"lost, none dead-lettered. Best of {rounds} alternating round(s). Worker CPU is the "
        "worker's process group (main process + pool children) from /proc; the main process "
        "alone beside it. In the end-to-end rows the producer (this process: validate, "
        "encode, publish) shares the 2 vCPUs with the worker and Redis. Variants: "
        "BENCH_P2_POOLS (comma-separated -P values, each optionally /plain: uncompressed "
        "task messages, as before zstd; /<n>: batches of at most n)."
    )
    return sec


def _per(cpu_seconds: float, count: int) -> str:
    return f"{cpu_seconds / count * 1e6:.0f} µs" if cpu_seconds else "-"


def _check(store: RedisCheckpointer, versions: dict[str, int], dead_letters: int) -> None:
    held: dict[str, int] = {}
    ids = list(versions)
    for i in range(0, len(ids), 1000):
        held.update(store.stored_versions(ids[i : i + 1000]))
    lost = sum(1 for tid, v in versions.items() if held.get(tid, 0) < v)
    if lost or dead_letters:
        raise RuntimeError(f"P2: {lost} snapshots lost, {dead_letters} dead-lettered")
