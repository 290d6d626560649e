"""P6: Redis memory per stored snapshot: compression off, the default (zstd ≥16 KB), zlib ≥16
KB (the default before zstd) and zstd at every size.

``MEMORY USAGE <key> SAMPLES 0`` of every record written (exact, includes Redis's own
overhead), averaged; the index entry per thread is ``MEMORY USAGE`` of the index divided by
its size. The snapshot text is code-like (compresses about 4x with zstd or zlib level 1).
"""

from __future__ import annotations

import os
import time

import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.codec import (
    DEFAULT_COMPRESS_THRESHOLD,
    DEFAULT_COMPRESSION,
    Codec,
    Compression,
)
from agents_persistence.keys import Keys

from bench.common import SIZES, Context, Section, label, snapshot

__all__ = ["run"]

_SER = AgentStateSnapshot.__pydantic_serializer__
_CONFIGS: tuple[tuple[str, int | None, Compression], ...] = (
    ("compression off", None, "zstd"),
    ("default (zstd ≥16 KB)", 16 * 1024, "zstd"),
    ("zlib ≥16 KB (the old default)", 16 * 1024, "zlib"),
    ("zstd at every size", 0, "zstd"),
)


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def run(ctx: Context) -> Section:
    """Measure P6."""
    sec = Section(
        "P6",
        "Redis memory per stored snapshot",
        ["size", "codec", "JSON", "stored record", "Redis memory / snapshot", "vs JSON",
         "save p50"],
    )  # fmt: skip
    ns = f"bench-p6-{os.getpid()}"
    for size in SIZES:
        count = 50 if size < 512 * 1024 else 10
        ctx.start(f"P6 {label(size)}", len(_CONFIGS) * count)
        states = [snapshot(size, seed=i) for i in range(count)]
        json_len = sum(len(_SER.to_json(s)) for s in states) / count
        for name, threshold, compression in _CONFIGS:
            store = RedisCheckpointer.from_url(
                ctx.redis_url, namespace=f"{ns}-{size}-{threshold}-{compression}",
                codec=Codec(compress_threshold=threshold, compression=compression),
            )  # fmt: skip
            client = redis.Redis.from_url(ctx.redis_url)  # MEMORY USAGE of our own keys
            layout = Keys(store.namespace)
            times = []
            for i, state in enumerate(states):
                t0 = time.perf_counter()
                store.save_state(f"t{i}", state)
                times.append(time.perf_counter() - t0)
                ctx.advance(1)
            keys = [layout.thread(f"t{i}") for i in range(count)]
            used = [int(client.memory_usage(k, samples=0) or 0) for k in keys]
            stored = [int(client.strlen(k)) for k in keys]
            index = (
                sum(int(client.memory_usage(k, samples=0) or 0) for k in layout.index_keys) / count
            )
            per = sum(used) / count + index
            times.sort()
            sec.add(**{
                "size": label(size), "codec": name, "JSON": _kib(json_len),
                "stored record": _kib(sum(stored) / count), "Redis memory / snapshot": _kib(per),
                "vs JSON": f"{per / json_len:.2f}x",
                "save p50": f"{times[count // 2] * 1e3:.2f} ms", "_bytes": per,
            })  # fmt: skip
            default = (threshold, compression) == (DEFAULT_COMPRESS_THRESHOLD, DEFAULT_COMPRESSION)
            if size == 64 * 1024 and default:
                sec.target(f"default codec, {label(size)}: Redis memory ≤ 0.4x the JSON",
                           per / json_len, 0.4)  # fmt: skip
            store.drop_namespace()
            client.close()
            store.close()
    sec.notes.append(
        "Redis memory / snapshot = MEMORY USAGE of the record + the thread's share of the "
        "index. Compression trades save/load CPU (see P3) for memory."
    )
    return sec
