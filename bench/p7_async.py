"""P7: the async hand-off — how long the event loop waits, and what it moves, beside threads.

1,000 agents hand off 4 KB snapshots (each its own thread id, a new version every save)
while a ticker asks the loop to wake it every 1 ms; its overshoot is the loop's lag (p50,
p99, max). Variants:

- ``async buffered, paced``: ``AsyncCeleryCheckpointer`` in buffered mode, each agent
  saving once a period (its phase random) so that all together offer a given rate —
  agents that await other things (a model, a tool) between saves.
- ``async buffered/durable, flat out``: every agent saves again as soon as the loop lets it
  (``await asyncio.sleep(0)`` between saves): the loop is CPU-bound by design, so its lag is
  the sum of the ready agents' steps, whatever the hand-off does; shown for throughput.
- ``sync buffered/durable, threads``: ``CeleryCheckpointer`` from a pool of threads, the
  same saves; its "lag" is a ticker thread's overshoot of ``time.sleep(0.001)`` (the GIL).
- ``idle``: the ticker alone: this machine's floor; and two controls at each paced rate,
  agents that only wake on schedule, and agents that only encode their snapshot
  (``prepare``: validation and JSON, part of every hand-off) — what the hand-off's buffer
  and publisher thread add is the difference.
- ``paced at 1,000/s, linger 20 ms``: the top paced rate with a longer batch linger
  (``batch_linger_seconds``, default 5 ms): fewer, larger messages.

Buffered rows also show the batch messages the publisher sent and its thread's CPU time per
message (``pthread_getcpuclockid``): the time it holds the GIL the loop needs.

Throughput counts saves the broker accepted (buffered: through ``publish_buffered``). No
worker runs: messages pile up in the queue, which is emptied after every variant. The
paced variants and their controls run in interleaved rounds, their lags pooled.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import redis
from agents_persistence import AgentStateSnapshot, AsyncRedisCheckpointer, RedisCheckpointer
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import AsyncCeleryCheckpointer, CeleryCheckpointer, create_app
from agents_persistence.tasks.worker.app import PersistenceApp

from bench.common import Context, Section, fmt_us, snapshot

__all__ = ["run"]

AGENTS = 1000
THREADS = 32
TICK = 0.001
LONG_LINGER = 0.02  # the paced variant again with this batch linger (default 5 ms)
PUBLISHER_THREAD = "agents-persistence-publisher"
Mode = Literal["durable", "buffered"]
Step = Literal["hand off", "encode", "wake"]
STEPS: tuple[Step, ...] = ("wake", "encode", "hand off")


@dataclass
class Outcome:
    """One variant: saves, the seconds they took (until the broker held them), the lags."""

    saves: int
    seconds: float
    lags: list[float]
    messages: int = 0  # batch messages the buffered publisher sent
    publisher_cpu: float = 0.0  # seconds of CPU its thread used

    def add(self, other: Outcome) -> None:
        """Pool ``other`` (another round of the same variant) into this one."""
        self.saves += other.saves
        self.seconds += other.seconds
        self.lags.extend(other.lags)
        self.messages += other.messages
        self.publisher_cpu += other.publisher_cpu


def _lag_row(name: str, agents: int, out: Outcome) -> dict[str, object]:
    lags = sorted(out.lags) or [0.0]
    n = len(lags)
    p50, p99, top = lags[n // 2], lags[min(n - 1, int(n * 0.99))], lags[-1]
    return {
        "variant": name,
        "agents": f"{agents:,}",
        "saves": f"{out.saves:,}",
        "saves/s": f"{out.saves / out.seconds:,.0f}" if out.saves else "-",
        "lag p50": fmt_us(p50 * 1e6),
        "lag p99": fmt_us(p99 * 1e6),
        "lag max": fmt_us(top * 1e6),
        "messages": f"{out.messages:,}" if out.messages else "",
        "publisher CPU/msg": fmt_us(out.publisher_cpu / out.messages * 1e6)
        if out.messages
        else "",
        "_p99_ms": p99 * 1000,
        "_rate": out.saves / out.seconds if out.saves else 0.0,
    }


# -- the event loop ------------------------------------------------------------------------------
async def _ticking(work: Callable[[], Awaitable[int]]) -> Outcome:
    """Run ``work`` while a 1 ms ticker records how late the loop woke it."""
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - t0 - TICK))

    ticker = asyncio.create_task(tick())
    t0 = time.perf_counter()
    try:
        saves = await work()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        await ticker
    return Outcome(saves, seconds, lags)


@dataclass
class Rig:
    """What every variant hands off through: settings, the store, the app, the snapshot."""

    settings: Settings
    store: RedisCheckpointer
    app: PersistenceApp
    state: AgentStateSnapshot

    def client(self, mode: Mode, linger: float | None = None) -> CeleryCheckpointer:
        """A blocking hand-off client in ``mode`` (``linger``: its batch linger, if not the
        default)."""
        settings = self.settings
        if linger is not None:
            settings = settings.model_copy(update={"batch_linger_seconds": linger})
        return CeleryCheckpointer(self.store, self.app, settings=settings, mode=mode)


def _publisher_cpu() -> float:
    """CPU seconds the buffered publisher's thread has used (0 if it is not running)."""
    for thread in threading.enumerate():
        if thread.name == PUBLISHER_THREAD and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return 0.0


def _async_variant(
    rig: Rig,
    mode: Mode,
    per_agent: int,
    rate: float | None,
    step: Step = "hand off",
    *,
    linger: float | None = None,
) -> Outcome:
    """``AGENTS`` coroutines, ``per_agent`` saves each; ``rate``: saves/s offered by all
    together (None: flat out). ``step``: what an agent does when its turn comes — hand off,
    only encode the snapshot (``prepare``), or nothing (the controls). ``linger``: the
    buffered publisher's, if not the default."""
    settings, state = rig.settings, rig.state

    async def main() -> Outcome:
        handoff = rig.client(mode, linger)
        async with (
            AsyncRedisCheckpointer.from_settings(settings) as astore,
            AsyncCeleryCheckpointer(handoff, astore, publish_threads=THREADS) as client,
        ):
            period = 0.0 if rate is None else AGENTS / rate
            phases = random.Random(7)

            async def agent(i: int) -> None:
                loop = asyncio.get_running_loop()
                start = loop.time() + phases.uniform(0, period)
                for v in range(1, per_agent + 1):
                    await asyncio.sleep(max(0.0, start + (v - 1) * period - loop.time()))
                    if step == "hand off":
                        await client.save_state(f"{mode}-{i}", state, version=v)
                    elif step == "encode":
                        rig.store.prepare(f"{mode}-{i}", state, version=v)

            cpu = 0.0

            async def work() -> int:
                nonlocal cpu
                await asyncio.gather(*(agent(i) for i in range(AGENTS)))
                await asyncio.to_thread(handoff.publish_buffered, 300)
                cpu = _publisher_cpu()  # before aclose ends the thread
                return AGENTS * per_agent

            out = await _ticking(work)
            if mode == "buffered" and step == "hand off":
                out.messages, out.publisher_cpu = handoff.published_messages, cpu
            return out

    return asyncio.run(main())


# -- threads --------------------------------------------------------------------------------------
def _thread_variant(rig: Rig, mode: Mode, saves: int) -> Outcome:
    """``THREADS`` threads share ``saves`` saves of ``AGENTS`` thread ids; a ticker thread
    records how late ``time.sleep(0.001)`` returns."""
    lags: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            time.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - t0 - TICK))

    with rig.client(mode) as client:
        per_thread = saves // THREADS

        def produce(t: int) -> None:
            for k in range(per_thread):
                i = t + THREADS * (k % (AGENTS // THREADS))
                client.save_state(f"sync-{mode}-{i}", rig.state, version=k + 1)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(produce, range(THREADS)))
        client.publish_buffered(300)
        seconds = time.perf_counter() - t0
        done.set()
        ticker.join()
    return Outcome(per_thread * THREADS, seconds, lags)


def run(ctx: Context) -> Section:
    """Measure P7."""
    sec = Section(
        "P7",
        f"Async hand-off: event-loop lag while {AGENTS:,} agents hand off 4 KB snapshots",
        [
            "variant", "agents", "saves", "saves/s", "lag p50", "lag p99", "lag max",
            "messages", "publisher CPU/msg",
        ],
    )  # fmt: skip
    ns = f"bench-p7-{os.getpid()}"
    settings = Settings(
        redis_url=ctx.redis_url, namespace=ns, queue=f"{ns}-q", buffer_max_snapshots=100_000
    )
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    broker = redis.Redis.from_url(ctx.redis_url)  # the broker's queue, not the store
    rig = Rig(settings, store, app, snapshot(4 * 1024))
    per_agent = ctx.scale(5, 20)
    rounds = ctx.scale(3, 5)
    rates = (200, 1_000)  # every agent saving every 5 s / every 1 s
    load_before = os.getloadavg()[0]
    ctx.start("P7", rounds * (2 + 3 * len(rates)) + 4)

    def measured(name: str, agents: int, out: Outcome) -> dict[str, object]:
        row = _lag_row(name, agents, out)
        sec.add(**row)
        return row

    def once(fn: Callable[[], Outcome]) -> Outcome:
        out = fn()
        broker.delete(settings.queue)
        ctx.advance(1)
        return out

    try:
        # Interleaved rounds: load from elsewhere on the machine falls on every variant alike.
        pooled: dict[tuple[int, Step] | str, Outcome] = {}
        n_top = max(1, per_agent * rates[-1] // 1600)
        for _ in range(rounds):
            pooled.setdefault("idle", Outcome(0, 0.0, [])).add(
                once(lambda: asyncio.run(_ticking(_idle)))
            )
            pooled.setdefault("long linger", Outcome(0, 0.0, [])).add(
                once(lambda: _async_variant(rig, "buffered", n_top, rates[-1], linger=LONG_LINGER))
            )
            for rate in rates:
                n = max(1, per_agent * rate // 1600)  # quick: a 5 s or 3 s run
                for step in STEPS:
                    pooled.setdefault((rate, step), Outcome(0, 0.0, [])).add(
                        once(lambda n=n, rate=rate, step=step: _async_variant(  # type: ignore[misc]
                            rig, "buffered", n, rate, step))
                    )  # fmt: skip
        measured("idle (the ticker alone)", 0, pooled["idle"])
        paced = []
        for rate in rates:
            for step in STEPS:
                name = {
                    "wake": f"control: agents only wake, {rate:,}/s",
                    "encode": f"control: agents only encode, {rate:,}/s",
                    "hand off": f"async buffered, paced at {rate:,}/s",
                }[step]
                row = measured(name, AGENTS, pooled[rate, step])
            paced.append(row)
        measured(
            f"async buffered, paced at {rates[-1]:,}/s, linger {LONG_LINGER * 1000:.0f} ms",
            AGENTS,
            pooled["long linger"],
        )
        flat: dict[str, float] = {}
        for mode in ("buffered", "durable"):
            n = per_agent if mode == "buffered" else max(1, per_agent // 5)
            flat[mode] = measured(
                f"async {mode}, flat out",
                AGENTS,
                once(lambda mode=mode, n=n: _async_variant(rig, mode, n, None)),  # type: ignore[misc]
            )["_rate"]  # type: ignore[assignment]
            measured(
                f"sync {mode}, {THREADS} threads",
                THREADS,
                once(lambda mode=mode, n=n: _thread_variant(rig, mode, AGENTS * n)),  # type: ignore[misc]
            )
        for rate, row in zip(rates, paced, strict=True):
            p99 = row["_p99_ms"]
            assert isinstance(p99, float)
            sec.target(f"loop lag p99 ≤ 5 ms, buffered, paced at {rate:,}/s", p99, 5.0)
        _durable_target(sec, flat)
        sec.notes.extend((
            "Lag: how late a 1 ms asyncio.sleep returned (threads: time.sleep on a ticker "
            "thread). Flat-out agents never wait on anything but the loop, so every loop "
            "iteration runs all of them: their lag is their CPU, not the hand-off's.",
            "Messages: batch messages the buffered publisher sent; publisher CPU/msg: its "
            "thread's CPU time over them (the GIL it takes from the loop). The batch linger "
            f"(default 5 ms) trades messages for delay: the {LONG_LINGER * 1000:.0f} ms row "
            "is the same paced run with AGENTS_PERSISTENCE_BATCH_LINGER_SECONDS="
            f"{LONG_LINGER}.",
        ))  # fmt: skip
        sec.notes.append(
            f"Async durable publishes on {THREADS} executor threads; sync variants use "
            f"{THREADS} producer threads. Broker and store: the same Redis; no worker. "
            f"Load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
            f"on {os.cpu_count()} CPUs: the idle row is the floor this run could reach."
        )
    finally:
        broker.delete(settings.queue)
        broker.close()
        store.drop_namespace()
        store.close()
        app.close()
    return sec


def _durable_target(sec: Section, flat: dict[str, float]) -> None:
    """Async durable against async buffered throughput, both flat out."""
    if flat["durable"] and flat["buffered"]:
        sec.target(
            f"{AGENTS:,} coroutines flat out: async durable ≥ 0.5x async buffered "
            "throughput (shown: 0.5 / ratio)",
            0.5 * flat["buffered"] / flat["durable"], 1.0,
            f"durable {flat['durable']:,.0f}/s = "
            f"{flat['durable'] / flat['buffered']:.2f}x buffered {flat['buffered']:,.0f}/s",
        )  # fmt: skip


async def _idle() -> int:
    await asyncio.sleep(1.0)
    return 0
