"""Run the benchmarks: ``python -m bench.run [--quick] [--only P1,P3] [--redis-url URL]
[--readme]``.

Without ``--redis-url`` a private ``redis-server`` on a free port serves as store and broker
(P2 always uses one: it counts what lands). Results: a rich table per section on the
terminal, ``bench/results/latest.json`` and ``bench/results/latest.md``; with ``--readme``,
also the README's performance table (:mod:`bench.readme`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celery
import redis
from agents_persistence.tasks.devtools.redis_server import RedisServer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bench.common import Context, Section
from bench.readme import SECTIONS as README_SECTIONS
from bench.readme import commit, render, update
from bench.report import rich_table, targets_table, write

SECTIONS = {
    "P1": "bench.p1_handoff",
    "P2": "bench.p2_throughput",
    "P3": "bench.p3_store",
    "P4": "bench.p4_listing",
    "P5": "bench.p5_langgraph",
    "P6": "bench.p6_memory",
    "P7": "bench.p7_async",
    "P8": "bench.p8_saver",
    "P9": "bench.p9_metrics",
    "P10": "bench.p10_cluster",
    "P11": "bench.p11_capacity",
}
RESULTS = Path(__file__).resolve().parent / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller samples (~2 minutes)")
    parser.add_argument("--only", default="", help="comma-separated sections, e.g. P1,P3")
    parser.add_argument("--redis-url", default=None, help="use this Redis, not a private one")
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL for P5's PostgresSaver",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* go")
    parser.add_argument(
        "--readme",
        action="store_true",
        help=f"run {','.join(README_SECTIONS)} (unless --only) and write the README's "
        "performance table from this run",
    )
    return parser.parse_args(argv)


def _meta(args: argparse.Namespace, redis_url: str, argv: list[str]) -> dict[str, Any]:
    info = redis.Redis.from_url(redis_url).info("server")
    return {
        "command": " ".join(["python -m bench.run", *map(shlex.quote, argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{os.cpu_count()} vCPU, Redis {info.get('redis_version')}, "
            f"Python {platform.python_version()}, redis-py {redis.__version__}, "
            f"Celery {celery.__version__}"
        ),
        "commit": commit(),
        "quick": args.quick,
        "redis": "private redis-server" if args.redis_url is None else "given --redis-url",
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a section failed)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    default = list(README_SECTIONS) if args.readme else list(SECTIONS)
    wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()] or default
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"unknown sections: {', '.join(unknown)}", file=sys.stderr)
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=150)
    server = RedisServer().start() if args.redis_url is None else None
    redis_url = args.redis_url or (server.url if server else "")
    sections: list[Section] = []
    failed = False
    try:
        meta = _meta(args, redis_url, argv)
        console.print(f"[bold]bench[/] {meta['machine']}; Redis: {meta['redis']}")
        with Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            current: list[TaskID] = []

            def start(description: str, total: int) -> None:
                if current:
                    progress.update(current[-1], completed=progress.tasks[-1].total)
                current.append(progress.add_task(description, total=total))

            def advance(n: int) -> None:
                if current:
                    progress.advance(current[-1], n)

            ctx = Context(redis_url, server is not None, args.quick, args.postgres_dsn,
                          start, advance)  # fmt: skip
            for key in wanted:
                t0 = time.monotonic()
                run: Callable[[Context], Section] = importlib.import_module(SECTIONS[key]).run
                try:
                    sec = run(ctx)
                except Exception as exc:  # report the section as failed, run the rest
                    failed = True
                    sec = Section(key, "failed", ["error"])
                    sec.add(error=f"{type(exc).__name__}: {exc}")
                    console.print_exception(max_frames=8)
                sec.seconds = time.monotonic() - t0
                sections.append(sec)
                if current:
                    progress.update(current[-1], completed=progress.tasks[-1].total)
                progress.console.print(rich_table(sec))
        console.print(targets_table(sections))
        js, md = write(args.out, meta, sections)
        console.print(f"wrote {js} and {md}")
        if args.readme:
            console.print(f"wrote the performance table of {update(render(meta, sections))}")
    finally:
        if server is not None:
            server.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
