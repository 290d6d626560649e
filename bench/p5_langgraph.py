"""P5: against LangGraph's savers — put and latest-get of an equivalent state.

The same snapshot becomes a LangGraph checkpoint with four channels (``todos``, ``files``,
``scratchpad``, ``pending_interrupts``), all changed by every put (as every save here
replaces the whole state). ``SqliteSaver`` writes a file in a temp directory (its default
journal, one commit per put); ``PostgresSaver`` uses the machine's PostgreSQL (``--postgres-dsn``,
default database ``test``, trust auth), rows of this run's threads deleted at the end.

Ours: ``RedisCheckpointer.save_state`` / ``load_state`` (synchronous, one round trip; with the
default codec, which zstd-compresses JSON of 16 KB and more, and with compression off), and
the agent's cost with ``CeleryCheckpointer`` (buffered and durable hand-off).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.codec import Codec
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import CeleryCheckpointer, create_app

from bench.common import (
    SIZES,
    Context,
    Section,
    Stats,
    fmt_us,
    interleaved,
    label,
    ratio,
    snapshot,
)

__all__ = ["run"]

_CHANNELS = ("todos", "files", "scratchpad", "pending_interrupts")


def _lg_put(saver: Any, thread: str, state: AgentStateSnapshot) -> Callable[[], object]:
    from langgraph.checkpoint.base.id import uuid6

    values = state.model_dump(mode="json")
    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    step = itertools.count(1)

    def put() -> object:
        i = next(step)
        versions = dict.fromkeys(_CHANNELS, i)
        checkpoint = {
            "v": 4, "id": str(uuid6(clock_seq=i)), "ts": datetime.now(UTC).isoformat(),
            "channel_values": values, "channel_versions": versions, "versions_seen": {},
            "pending_sends": [], "updated_channels": list(_CHANNELS),
        }  # fmt: skip
        return saver.put(config, checkpoint, {"source": "loop", "step": i, "parents": {}},
                         versions)  # fmt: skip

    return put


def _lg_get(saver: Any, thread: str) -> Callable[[], object]:
    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}

    def get() -> object:
        return saver.get_tuple(config)

    return get


def run(ctx: Context) -> Section:
    """Measure P5."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver

    sec = Section(
        "P5",
        "Against LangGraph savers: put and latest-get",
        ["size", "saver", "put p50", "put p99", "get p50", "get p99", "put vs ours"],
    )
    ns = f"bench-p5-{os.getpid()}"
    settings = Settings(redis_url=ctx.redis_url, namespace=ns, queue=f"{ns}-q")
    store = RedisCheckpointer.from_settings(settings)
    plain = RedisCheckpointer.from_url(
        ctx.redis_url, namespace=f"{ns}-plain", codec=Codec(compress_threshold=None)
    )
    app = create_app(settings, store=store)
    buffered = CeleryCheckpointer(store, app, settings=settings, mode="buffered")
    durable = CeleryCheckpointer(store, app, settings=settings, mode="durable")
    assert buffered._publisher is not None
    publisher = buffered._publisher
    tmp = Path(tempfile.mkdtemp(prefix="bench-p5-"))
    sqlite_conn = sqlite3.connect(tmp / "checkpoints.sqlite", check_same_thread=False)
    sqlite = SqliteSaver(sqlite_conn)
    threads: list[str] = []

    broker = redis.Redis.from_url(ctx.redis_url)  # the queue, not the store

    def drain() -> None:
        publisher.flush(120)
        broker.delete(settings.queue)

    try:
        with PostgresSaver.from_conn_string(ctx.postgres_dsn) as pg:
            pg.setup()
            for size in SIZES:
                n = ctx.scale(150, 600) if size < 512 * 1024 else ctx.scale(20, 60)
                state = snapshot(size)
                tid = f"{ns}-{size}"
                threads.append(tid)
                ctx.start(f"P5 {label(size)}", 8 * n)
                variants: dict[str, Callable[[], object]] = {
                    "ours_put": lambda s=state, t=tid: store.save_state(t, s),  # type: ignore[misc]
                    "ours_get": lambda t=tid: store.load_state(t),  # type: ignore[misc]
                    "plain_put": lambda s=state, t=tid: plain.save_state(t, s),  # type: ignore[misc]
                    "plain_get": lambda t=tid: plain.load_state(t),  # type: ignore[misc]
                    "buffered_put": lambda s=state, t=tid: buffered.save_state(t, s),  # type: ignore[misc]
                    "durable_put": lambda s=state, t=tid: durable.save_state(t, s),  # type: ignore[misc]
                    "sqlite_put": _lg_put(sqlite, tid, state),
                    "sqlite_get": _lg_get(sqlite, tid),
                    "pg_put": _lg_put(pg, tid, state),
                    "pg_get": _lg_get(pg, tid),
                }
                variants["ours_put"]()
                variants["sqlite_put"]()
                variants["pg_put"]()
                stats = interleaved(variants, n, warmup=3,
                                    after_round={"buffered_put": drain, "durable_put": drain},
                                    tick=ctx.advance)  # fmt: skip
                _report(sec, size, stats)
            for tid in threads:
                pg.delete_thread(tid)
    finally:
        buffered.close(60)
        broker.delete(settings.queue)
        broker.close()
        store.drop_namespace()
        plain.drop_namespace()
        plain.close()
        sqlite_conn.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        store.close()
    sec.notes.append(
        "LangGraph keeps every checkpoint (history); ours keeps the newest state per thread. "
        "Redis without AOF/fsync here vs SQLite's and PostgreSQL's commit on every put."
    )
    return sec


def _report(sec: Section, size: int, stats: dict[str, Stats]) -> None:
    ours = stats["ours_put"].p50_us
    for name, put, get in (
        ("RedisCheckpointer (direct, default: zstd ≥16 KB)", "ours_put", "ours_get"),
        ("RedisCheckpointer (direct, compression off)", "plain_put", "plain_get"),
        ("CeleryCheckpointer buffered (hand-off)", "buffered_put", None),
        ("CeleryCheckpointer durable (hand-off)", "durable_put", None),
        ("LangGraph SqliteSaver (file)", "sqlite_put", "sqlite_get"),
        ("LangGraph PostgresSaver", "pg_put", "pg_get"),
    ):
        p, g = stats[put], stats[get] if get else None
        sec.add(**{
            "size": label(size), "saver": name, "put p50": fmt_us(p.p50_us),
            "put p99": fmt_us(p.p99_us),
            "get p50": fmt_us(g.p50_us) if g else "-",
            "get p99": fmt_us(g.p99_us) if g else "-",
            "put vs ours": ratio(p.p50_us, ours),
        })  # fmt: skip
    for other, key in (("SqliteSaver", "sqlite_put"), ("PostgresSaver", "pg_put")):
        theirs = stats[key].p50_us
        sec.target(f"put faster than {other}, {label(size)}, default codec "
                   "(ours / theirs)", ours / theirs, 1.0)  # fmt: skip
        sec.target(f"put faster than {other}, {label(size)}, compression off "
                   "(ours / theirs)", stats["plain_put"].p50_us / theirs, 1.0)  # fmt: skip
