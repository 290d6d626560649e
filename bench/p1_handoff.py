"""P1: what a save costs the agent — hand-off latency at 4 KB, 64 KB and 1 MB.

Variants, interleaved round by round, each save a new thread (no coalescing helps):

- ``buffered``: ``CeleryCheckpointer.save_state`` in buffered mode (returns before any
  network round trip; a background thread publishes batches).
- ``durable``: the same in durable mode (returns once the broker accepted the message).
- ``send_task``: a bare ``app.send_task`` of the same, already built, message.
- ``direct``: ``RedisCheckpointer.save_state`` (the synchronous write the hand-off replaces).

No worker runs: messages pile up in the queue, which is emptied after every round.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import SAVE_TASK, CeleryCheckpointer, PersistenceApp, create_app
from agents_persistence.tasks.protocol.messages import save_message

from bench.common import SIZES, Context, Section, fmt_us, interleaved, label, ratio, snapshot

__all__ = ["THREADS", "run"]

#: Agent threads of the concurrent rows (hand-offs per second, durable against buffered).
THREADS = 20


def run(ctx: Context) -> Section:
    """Measure P1."""
    sec = Section(
        "P1",
        "Hand-off latency (what save_state costs the agent)",
        ["size", "variant", "p50", "p99", "vs direct", "vs send_task"],
    )
    ns = f"bench-p1-{os.getpid()}"
    settings = Settings(
        redis_url=ctx.redis_url, namespace=ns, queue=f"{ns}-q", buffer_max_snapshots=100_000
    )
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    durable = CeleryCheckpointer(store, app, settings=settings, mode="durable")
    buffered = CeleryCheckpointer(store, app, settings=settings, mode="buffered")
    publisher = buffered._publisher
    assert publisher is not None
    client = redis.Redis.from_url(ctx.redis_url)  # the broker's queue, not the store

    def drain() -> None:
        publisher.flush(120)
        client.delete(settings.queue)

    try:
        for size in SIZES:
            n = ctx.scale(400, 2000) if size < 512 * 1024 else ctx.scale(40, 150)
            state = snapshot(size)
            message = save_message(ns, store.prepare("bare", state))
            ctx.start(f"P1 {label(size)}", 4 * n)
            stats = interleaved(
                _variants(state, message, buffered, durable, app, store, settings.queue),
                n,
                warmup=3 if size > 512 * 1024 else 20,
                after_round={"buffered": drain, "durable": drain, "send_task": drain},
                tick=ctx.advance,
            )
            direct, bare = stats["direct"].p50_us, stats["send_task"].p50_us
            names = {
                "buffered": "CeleryCheckpointer buffered",
                "durable": "CeleryCheckpointer durable",
                "send_task": "bare app.send_task",
                "direct": "RedisCheckpointer.save_state",
            }
            for key, name in names.items():
                st = stats[key]
                sec.add(**{
                    "size": label(size), "variant": name, "p50": fmt_us(st.p50_us),
                    "p99": fmt_us(st.p99_us), "vs direct": ratio(st.p50_us, direct),
                    "vs send_task": ratio(st.p50_us, bare),
                    "_p50_us": st.p50_us, "_p99_us": st.p99_us,
                })  # fmt: skip
            sec.target(
                f"buffered p50 ≤ 0.5x direct save, {label(size)}",
                stats["buffered"].p50_us / direct, 0.5,
            )  # fmt: skip
            sec.target(
                f"durable p50 ≤ 1.0x bare send_task, {label(size)}",
                stats["durable"].p50_us / bare, 1.0,
            )  # fmt: skip
        _concurrent(ctx, sec, buffered, durable, drain)
        sec.notes.append(
            "Broker and store: the same Redis. Each save is a new thread id, so buffered mode "
            "gets no help from coalescing; its publisher thread shares the GIL with the caller. "
            f"Concurrent rows: {THREADS} threads, each saving 4 KB snapshots to thread ids of "
            "its own; buffered counts until its publisher's flush returned (all published), "
            "durable until the last save_state returned; median of 3 alternating rounds."
        )
    finally:
        buffered.close(60)
        client.delete(settings.queue)
        client.close()
        store.drop_namespace()
        store.close()
    return sec


def _variants(  # noqa: PLR0917 - a private helper of run()
    state: AgentStateSnapshot,
    message: dict[str, Any],
    buffered: CeleryCheckpointer,
    durable: CeleryCheckpointer,
    app: PersistenceApp,
    store: RedisCheckpointer,
    queue: str,
) -> dict[str, Callable[[], object]]:
    ids = itertools.count()

    def buffered_save() -> object:
        return buffered.save_state(f"b{next(ids)}", state)

    def durable_save() -> object:
        return durable.save_state(f"d{next(ids)}", state)

    def bare_send() -> object:
        return app.send_task(SAVE_TASK, kwargs=message, queue=queue, ignore_result=True)

    def direct_save() -> object:
        return store.save_state(f"w{next(ids)}", state)

    return {
        "buffered": buffered_save,
        "durable": durable_save,
        "send_task": bare_send,
        "direct": direct_save,
    }


def _concurrent(
    ctx: Context,
    sec: Section,
    buffered: CeleryCheckpointer,
    durable: CeleryCheckpointer,
    drain: Callable[[], None],
) -> None:
    """:data:`THREADS` threads saving at once: hand-offs per second, durable vs buffered."""
    per_thread = ctx.scale(40, 150)
    state = snapshot(4 * 1024)
    rounds = 3
    ctx.start(f"P1 {THREADS} threads", 2 * rounds)
    rates: dict[str, list[float]] = {"buffered": [], "durable": []}
    for r in range(rounds):
        for mode, store in (("buffered", buffered), ("durable", durable))[:: 1 if r % 2 else -1]:
            rates[mode].append(_rate(store, state, f"c{r}{mode[0]}", per_thread))
            drain()
            ctx.advance(1)
    med = {mode: statistics.median(v) for mode, v in rates.items()}
    for mode in ("buffered", "durable"):
        sec.add(**{
            "size": "4 KB", "variant": f"{THREADS} threads: CeleryCheckpointer {mode}",
            "p50": f"{med[mode]:,.0f} saves/s", "p99": "",
            "vs direct": "", "vs send_task": "",
            "_rate": med[mode], "_rates": rates[mode],
        })  # fmt: skip
    sec.target(
        f"{THREADS} threads: durable ≥ 0.5x buffered throughput (shown: 0.5 / ratio)",
        0.5 * med["buffered"] / med["durable"], 1.0,
        f"durable {med['durable']:,.0f}/s = {med['durable'] / med['buffered']:.2f}x "
        f"buffered {med['buffered']:,.0f}/s",
    )  # fmt: skip


def _rate(
    store: CeleryCheckpointer, state: AgentStateSnapshot, tag: str, per_thread: int
) -> float:
    """Saves per second of :data:`THREADS` threads, ``per_thread`` saves each; buffered
    mode's time includes its publisher's flush (everything handed off is published: no
    worker runs, so nothing becomes durable in the store)."""
    go = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        go.wait()
        try:
            for j in range(per_thread):
                store.save_state(f"{tag}-{i}-{j}", state)
        except BaseException as exc:  # reported below, after the join
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if store._publisher is not None:  # buffered: until the publisher sent everything
        store._publisher.flush(120)
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"P1: a concurrent save failed: {errors[0]!r}")
    return THREADS * per_thread / seconds
