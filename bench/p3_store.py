"""P3: the core's save and load against the raw Redis work they wrap.

- save: ``RedisCheckpointer.save_state`` (validate, version, encode, one round trip with the
  compare-and-set) vs a raw write of the same snapshot with the same JSON encoder and
  ``MULTI; SET; ZADD; EXEC``.
- load: ``RedisCheckpointer.load_state`` vs raw ``GET`` + ``model_validate_json`` (parse and
  validate in one pass, the cheapest correct load).

With compression off, with the default codec (zstd for JSON of 16 KB and more) and, for
the comparison, with zlib level 1 from 16 KB on (the default before zstd).
"""

from __future__ import annotations

import os
from functools import partial

import orjson
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.codec import Codec

from bench.common import SIZES, Context, Section, fmt_us, interleaved, label, ratio, snapshot

__all__ = ["run"]

_SER = AgentStateSnapshot.__pydantic_serializer__
#: Save: at most 1.1x the raw write at every size. Load: 1.10x the raw floor at 4 KB (the
#: size where the store's own work weighs most), 1.15x above.
SAVE_LIMIT = 1.1
LOAD_LIMITS = {4 * 1024: 1.10, 64 * 1024: 1.15, 1024 * 1024: 1.15}


def _plain_json(state: AgentStateSnapshot) -> bytes:
    """The fastest plain encoding: the same choice as the codec, none of its checks."""
    if sum(map(len, state.files.values())) >= 16 * 1024:
        return orjson.dumps(state.model_dump(mode="json"))
    return _SER.to_json(state)


def run(ctx: Context) -> Section:
    """Measure P3."""
    sec = Section(
        "P3",
        "Store hot paths: save_state / load_state vs raw Redis",
        ["size", "operation", "p50", "p99", "raw p50", "vs raw"],
    )
    ns = f"bench-p3-{os.getpid()}"
    default = RedisCheckpointer.from_url(ctx.redis_url, namespace=ns)
    plain = RedisCheckpointer.from_url(
        ctx.redis_url, namespace=f"{ns}-plain", codec=Codec(compress_threshold=None)
    )
    zlib_store = RedisCheckpointer.from_url(
        ctx.redis_url, namespace=f"{ns}-zlib", codec=Codec(compression="zlib")
    )
    # The raw baseline, no store in between, on a client built as the stores' are (the same
    # timeouts, redis-py retry and command packer): the ratios are the store's own work.
    raw_store = RedisCheckpointer.from_url(ctx.redis_url, namespace=f"{ns}-raw")
    client = raw_store.client
    raw_key, raw_index = f"{ns}-raw:thread:t", f"{ns}-raw:index"
    worst_save = worst_load = 0.0
    try:
        for size in SIZES:
            n = ctx.scale(300, 1500) if size < 512 * 1024 else ctx.scale(40, 150)
            state = snapshot(size)
            ctx.start(f"P3 {label(size)}", 8 * n)

            def raw_write(state: AgentStateSnapshot = state) -> None:
                pipe = client.pipeline(transaction=True)
                pipe.set(raw_key, _plain_json(state))
                pipe.zadd(raw_index, {"t": 1.0})
                pipe.execute()

            def raw_load() -> AgentStateSnapshot:
                return AgentStateSnapshot.model_validate_json(client.get(raw_key))  # type: ignore[arg-type]

            raw_write()
            default.save_state("t", state)
            plain.save_state("t", state)
            zlib_store.save_state("t", state)
            # Two phases: compressors' large buffers move glibc's mmap/trim thresholds, which
            # then decide whether each 1 MB allocation faults its pages in again (the note).
            stats = interleaved(
                {
                    "raw_write": raw_write,
                    "save_plain": partial(plain.save_state, "t", state),
                    "raw_load": raw_load,
                    "load_plain": lambda: plain.load_state("t"),
                },
                n,
                # Rounds of 10 calls each: the floors are ratios of these four, and this
                # machine's load moves within tens of ms, so each variant meets it alike.
                rounds=max(10, n // 10),
                warmup=2,
                tick=ctx.advance,
            )
            stats |= interleaved(
                {
                    "save_default": partial(default.save_state, "t", state),
                    "load_default": lambda: default.load_state("t"),
                    "save_zlib": partial(zlib_store.save_state, "t", state),
                    "load_zlib": lambda: zlib_store.load_state("t"),
                },
                n,
                tick=ctx.advance,
            )
            if any(s.load_state("t") != state for s in (default, plain, zlib_store)):
                raise RuntimeError("P3: a loaded state differs from the saved one")
            raw_w, raw_l = stats["raw_write"].p50_us, stats["raw_load"].p50_us
            for key, what, base in (
                ("save_plain", "save_state (compression off)", raw_w),
                ("save_default", "save_state (default: zstd ≥16 KB)", raw_w),
                ("save_zlib", "save_state (zlib ≥16 KB, the old default)", raw_w),
                ("raw_write", "raw: encode + MULTI SET ZADD EXEC", raw_w),
                ("load_plain", "load_state (compression off)", raw_l),
                ("load_default", "load_state (default: zstd ≥16 KB)", raw_l),
                ("load_zlib", "load_state (zlib ≥16 KB, the old default)", raw_l),
                ("raw_load", "raw GET + model_validate_json", raw_l),
            ):
                st = stats[key]
                sec.add(**{
                    "size": label(size), "operation": what, "p50": fmt_us(st.p50_us),
                    "p99": fmt_us(st.p99_us), "raw p50": fmt_us(base),
                    "vs raw": ratio(st.p50_us, base),
                    "_p50_us": st.p50_us, "_p99_us": st.p99_us,
                })  # fmt: skip
            worst_save = max(worst_save, stats["save_plain"].p50_us / raw_w)
            worst_load = max(worst_load, stats["load_plain"].p50_us / raw_l)
            sec.target(
                f"save ≤ {SAVE_LIMIT:g}x raw write, {label(size)} (compression off)",
                stats["save_plain"].p50_us / raw_w, SAVE_LIMIT,
            )  # fmt: skip
            limit = LOAD_LIMITS[size]
            sec.target(
                f"load ≤ {limit:g}x raw GET+validate, {label(size)} (compression off)",
                stats["load_plain"].p50_us / raw_l, limit,
            )  # fmt: skip
            if size >= 16 * 1024:
                for op in ("save", "load"):
                    sec.target(
                        f"{op}: default codec (zstd) vs zlib, {label(size)}",
                        stats[f"{op}_default"].p50_us / stats[f"{op}_zlib"].p50_us, 1.0,
                    )  # fmt: skip
        sec.notes.append(
            "Raw write = the same JSON encoder as the codec (pydantic to_json below 16 KB of "
            "file text, JSON-mode dump + orjson above) + MULTI SET ZADD EXEC: no version check, "
            "no checks, no header; raw load = GET + model_validate_json; both on the client of "
            "a store (its timeouts, redis-py retry and command packer), whose keys they use "
            "directly. save_state writes ≤32 KB "
            "records in one EVALSHA, larger ones as SET staging + EVALSHA (RENAME) in one "
            "MULTI/EXEC. The compressed rows run in a second phase: at 1 MB, timings here depend "
            "on whether glibc serves the allocation from its heap or from fresh, page-faulted "
            "mmap memory, and the compressors' buffers shift that for whatever runs next."
        )
    finally:
        for store in (default, plain, zlib_store):
            store.drop_namespace()
        client.delete(raw_key, raw_index)
        raw_store.close()
        default.close()
        plain.close()
        zlib_store.close()
    return sec
