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
from collections.abc import Callable
from typing import Any

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import SAVE_TASK, CeleryCheckpointer, PersistenceApp, create_app
from agents_persistence.tasks.protocol.messages import save_message

from bench.common import SIZES, Context, Section, fmt_us, interleaved, label, ratio, snapshot

__all__ = ["run"]


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
        sec.notes.append(
            "Broker and store: the same Redis. Each save is a new thread id, so buffered mode "
            "gets no help from coalescing; its publisher thread shares the GIL with the caller."
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
