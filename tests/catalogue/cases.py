"""The bad inputs of the catalogue (docs/bad-input.md), named by the ids the tests use."""

from __future__ import annotations

import math
import zlib
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from agents_persistence.validation import MAX_THREAD_ID_LENGTH

__all__ = [
    "BAD_SNAPSHOTS",
    "BAD_THREAD_IDS",
    "INVISIBLE_THREAD_IDS",
    "deep",
    "deep_list",
    "zlib_bomb",
    "zstd_bomb",
]


def deep(levels: int) -> dict[str, Any]:
    """A dict nested ``levels`` deep."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        child: dict[str, Any] = {}
        node["a"] = child
        node = child
    return root


def deep_list(levels: int) -> list[Any]:
    """A list nested ``levels`` deep."""
    root: list[Any] = []
    node = root
    for _ in range(levels):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


#: Thread ids no checkpointer accepts (every one raises InvalidThreadId).
BAD_THREAD_IDS: Final[dict[str, object]] = {
    "empty": "",
    "whitespace": " \t\n ",
    "nul": "thread\x00id",
    "newline": "thread\nid",
    "escape": "\x1b[31mred",
    "del": "thread\x7f",
    "c1-control": "thread\x85",
    "line-separator": "thread\u2028id",
    "too-long": "x" * (MAX_THREAD_ID_LENGTH + 1),
    "lone-surrogate": "thread\ud800",
    "int": 42,
    "bytes": b"thread",
    "none": None,
    "list": ["thread"],
}

#: Snapshots (as the mappings an agent may pass) that raise InvalidSnapshot.
BAD_SNAPSHOTS: Final[dict[str, object]] = {
    "todos-not-list": {"todos": "write tests"},
    "todo-no-content": {"todos": [{"status": "pending"}]},
    "unknown-status": {"todos": [{"content": "x", "status": "done"}]},
    "files-not-str": {"files": {"a.txt": 1}},
    "scratchpad-int-key": {"scratchpad": {1: "x"}},
    "unknown-field": {"todos": [], "bogus": 1},
    "unknown-interrupt": {"pending_interrupts": [{"type": "robot", "tool_name": "rm"}]},
    "deep-dict": {"scratchpad": {"d": deep(5000)}},
    "deep-list": {"scratchpad": {"d": deep_list(5000)}},
    "nan": {"scratchpad": {"x": math.nan}},
    "infinity": {"scratchpad": {"x": -math.inf}},
    "set": {"scratchpad": {"x": {1, 2}}},
    "bytes": {"scratchpad": {"x": b"raw"}},
    "datetime": {"scratchpad": {"x": datetime(2026, 1, 1)}},
    "decimal": {"scratchpad": {"x": Decimal("1.5")}},
    "object": {"scratchpad": {"x": object()}},
    "lone-surrogate": {"files": {"a.txt": "\udc80"}},
    "not-a-mapping": ["todos"],
    "none": None,
}


#: Thread ids that print as something else or reorder a line: invisible format characters,
#: bidi controls, separators (Unicode categories Cf, Zl, Zp; Cc is in BAD_THREAD_IDS).
INVISIBLE_THREAD_IDS: Final[dict[str, str]] = {
    "zero-width-space": "admin\u200b",
    "rtl-override": "thread-\u202etxt.exe",
    "bom": "\ufeffthread",
    "zero-width-joiner": "a\u200db",
    "soft-hyphen": "thre\u00adad",
    "bidi-isolate": "\u2066thread\u2069",
    "paragraph-separator": "thread\u2029id",
    "tag-character": "thread\U000e0041",
}


def zlib_bomb(inflated: int, prefix: bytes = b'{"files":{"a":"', suffix: bytes = b'"}}') -> bytes:
    """A valid zlib stream of ``prefix``, ``inflated`` bytes of ``x`` and ``suffix``, about
    a thousandth of that size, built without compressing it all (a flushed segment of 1 MiB,
    repeated; the checksum computed apart): 200 MiB takes ~0.3 s and 207 KB."""
    chunk = b"x" * (1 << 20)
    z = zlib.compressobj(9)
    head = z.compress(prefix) + z.flush(zlib.Z_FULL_FLUSH)
    segment = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)  # the same bytes every time
    tail = z.compress(suffix) + z.flush(zlib.Z_FINISH)
    n = inflated // len(chunk)
    check = zlib.adler32(prefix)
    for _ in range(n):
        check = zlib.adler32(chunk, check)
    check = zlib.adler32(suffix, check)
    return head + segment * n + tail[:-4] + check.to_bytes(4, "big")


def zstd_bomb(
    inflated: int,
    *,
    states_size: bool = True,
    prefix: bytes = b'{"files":{"a":"',
    suffix: bytes = b'"}}',
) -> bytes:
    """A valid zstd frame of ``prefix``, ``inflated`` bytes of ``x`` and ``suffix``, fed in
    1 MiB pieces (200 MiB takes ~0.2 s and a few KB). With ``states_size`` its header
    states the inflated size, as every frame the codec writes does; without, it does not
    (a streaming writer's frame)."""
    import zstandard  # only the bomb tests need it here

    chunk = b"x" * (1 << 20)
    n = inflated // len(chunk)
    size = len(prefix) + n * len(chunk) + len(suffix) if states_size else -1
    z = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    parts = [z.compress(prefix)]
    parts.extend(z.compress(chunk) for _ in range(n))
    parts += [z.compress(suffix), z.flush()]
    return b"".join(parts)
