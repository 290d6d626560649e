"""P8: the LangGraph saver beside its peers — ``put`` and ``get_tuple`` p50, 4 KB and 64 KB.

Every saver gets the same LangGraph checkpoint (P5's: the snapshot's four fields as channels,
all changed by every put), interleaved in one run: ours (``RedisCheckpointSaver``, direct),
``InMemorySaver`` (no store at all), ``SqliteSaver`` (a file in a temp directory, not shared
between hosts), ``PostgresSaver`` (the machine's PostgreSQL, ``--postgres-dsn``) and the
plain-Redis peer ``langgraph-checkpoint-plainredis`` on the same Redis as ours. Each saver's
threads are deleted at the end.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents_persistence.langgraph import RedisCheckpointSaver

from bench.common import Context, Section, Stats, fmt_us, interleaved, label, ratio, snapshot
from bench.p5_langgraph import _lg_get, _lg_put

__all__ = ["run"]

SIZES = (4 * 1024, 64 * 1024)
#: (row label, variant key, shared between hosts).
_SAVERS = (
    ("RedisCheckpointSaver (ours, direct)", "ours", True),
    ("langgraph-checkpoint-plainredis RedisSaver", "plainredis", True),
    ("LangGraph PostgresSaver", "pg", True),
    ("LangGraph SqliteSaver (file)", "sqlite", False),
    ("LangGraph InMemorySaver", "memory", False),
)


def run(ctx: Context) -> Section:
    """Measure P8."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph_checkpoint_plainredis import RedisSaver

    sec = Section(
        "P8",
        "LangGraph saver beside its peers: put and get_tuple",
        ["size", "saver", "put p50", "put p99", "get p50", "get p99", "put vs ours"],
    )
    ns = f"bench-p8-{os.getpid()}"
    ours = RedisCheckpointSaver.from_url(ctx.redis_url, namespace=ns)
    plain = RedisSaver(url=ctx.redis_url, prefix=f"{ns}-plainredis")
    memory = InMemorySaver()
    tmp = Path(tempfile.mkdtemp(prefix="bench-p8-"))
    sqlite_conn = sqlite3.connect(tmp / "checkpoints.sqlite", check_same_thread=False)
    sqlite = SqliteSaver(sqlite_conn)
    threads: list[str] = []
    try:
        with PostgresSaver.from_conn_string(ctx.postgres_dsn) as pg:
            pg.setup()
            savers: dict[str, Any] = {
                "ours": ours,
                "plainredis": plain,
                "pg": pg,
                "sqlite": sqlite,
                "memory": memory,
            }
            for size in SIZES:
                n = ctx.scale(150, 600)
                state = snapshot(size)
                tid = f"{ns}-{size}"
                threads.append(tid)
                ctx.start(f"P8 {label(size)}", 2 * len(savers) * n)
                variants: dict[str, Callable[[], object]] = {}
                for key, saver in savers.items():
                    variants[f"{key}_put"] = _lg_put(saver, tid, state)
                    variants[f"{key}_get"] = _lg_get(saver, tid)
                    variants[f"{key}_put"]()  # get_tuple always finds a checkpoint
                stats = interleaved(variants, n, warmup=3, tick=ctx.advance)
                _report(sec, size, stats)
            for tid in threads:
                for saver in savers.values():
                    saver.delete_thread(tid)
    finally:
        ours.close()
        plain.client.close()
        sqlite_conn.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    sec.notes.append(
        "Every saver keeps every checkpoint (LangGraph history). Redis without AOF/fsync here "
        "vs SQLite's and PostgreSQL's commit on every put; InMemorySaver and SQLite are not "
        "shared stores (reported, not targets)."
    )
    return sec


def _report(sec: Section, size: int, stats: dict[str, Stats]) -> None:
    ours = stats["ours_put"].p50_us
    for name, key, _shared in _SAVERS:
        put, get = stats[f"{key}_put"], stats[f"{key}_get"]
        sec.add(**{
            "size": label(size), "saver": name, "put p50": fmt_us(put.p50_us),
            "put p99": fmt_us(put.p99_us), "get p50": fmt_us(get.p50_us),
            "get p99": fmt_us(get.p99_us), "put vs ours": ratio(put.p50_us, ours),
        })  # fmt: skip
    for name, key, shared in _SAVERS:
        if not shared or key == "ours":
            continue
        for op in ("put", "get"):
            sec.target(
                f"{op} p50 faster than {name}, {label(size)} (ours / theirs)",
                stats[f"ours_{op}"].p50_us / stats[f"{key}_{op}"].p50_us,
                1.0,
            )
