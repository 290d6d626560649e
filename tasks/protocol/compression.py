"""zstd for task message bodies: kombu's ``application/zstd``, inflated only within a bound.

A batch of 100 snapshots is ~420 KB of JSON; on the Redis transport the worker's main
process handles every byte of it several times before any task runs (the envelope parsed,
its base64 decoded, the unacknowledged copy encoded and written back to Redis, the
in-flight entry compared), and Redis moves it as often. zstd level 1 makes agent state
~4x smaller for ~2.5 ms per MB on the producer and ~0.5 ms per MB on the worker, so the
layer's apps publish task messages compressed (``task_compression``); the body stays
``application/json`` underneath, and uncompressed messages are read as before.

kombu 5.7 registers zstd only from the standard library's ``compression.zstd`` (Python
3.14) or ``backports.zstd``; :func:`install_message_compression` registers it from
``zstandard`` (the codec's dependency) instead, with a decoder that reads the frame's
stated size first and refuses one above the limit (or one that states none) before it
allocates anything: a few KB of zstd can never become hundreds of MB in a worker. kombu's
other decoders (zlib, bzip2, lzma, brotli...) stay refused in the worker
(:func:`~agents_persistence.tasks.worker.consumer.refuse_decompression`).

Every worker must run this release before producers do: an older worker refuses (dead-
letters, replayable) the compressed messages of a newer producer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import zstandard
from kombu import compression

__all__ = [
    "MESSAGE_COMPRESSION",
    "CompressedBodyRefused",
    "bounded_decompressor",
    "compress",
    "install_message_compression",
    "message_body_limit",
]

#: kombu's content type for zstd (its ``compression`` header), and its aliases.
MESSAGE_COMPRESSION: Final = "application/zstd"
_ALIASES: Final = ["zstd", "zstandard"]
_LEVEL: Final = 1
#: JSON escapes a string at most 6x (``\u0000``): the most a message of snapshots that fit
#: the size caps can hold, plus room for its other fields.
_ESCAPE_FACTOR: Final = 6
_ENVELOPE_SLACK: Final = 1024 * 1024


class CompressedBodyRefused(ValueError):
    """A compressed message body that is not inflated: another algorithm, not zstd, a
    damaged frame, no stated size, or a stated size beyond the limit."""


class _Contexts(threading.local):
    """This thread's zstd contexts (a context must not serve two threads at once)."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_CONTEXTS = _Contexts()


def message_body_limit(max_snapshot_bytes: int, batch_max_bytes: int) -> int:
    """Largest inflated body a worker accepts: a batch or a single snapshot at its cap, each
    character escaped in the worst way, and the message's other fields."""
    return _ESCAPE_FACTOR * max(max_snapshot_bytes, batch_max_bytes) + _ENVELOPE_SLACK


def compress(body: bytes) -> bytes:
    """One zstd frame of ``body``, its size stated in the frame header."""
    return _CONTEXTS.compressor.compress(body)


def bounded_decompressor(limit: int) -> Callable[[bytes], bytes]:
    """A kombu decoder for zstd bodies that inflates only frames stating a size of at most
    ``limit`` bytes (checked before allocating) and refuses trailing bytes."""

    def decompress(body: bytes) -> bytes:
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise CompressedBodyRefused(f"zstd body of {len(body)} bytes: {exc}") from exc
        if size < 0:
            raise CompressedBodyRefused("zstd body does not state its size; not inflated")
        if size > limit:
            raise CompressedBodyRefused(
                f"zstd body states {size} bytes, beyond the limit of {limit}; not inflated"
            )
        try:
            return _CONTEXTS.decompressor.decompress(body, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CompressedBodyRefused(f"zstd body does not inflate: {exc}") from exc

    return decompress


def install_message_compression(limit: int) -> None:
    """Register zstd with kombu (process-wide, idempotent): :func:`compress`, and
    :func:`bounded_decompressor` of ``limit`` (the last call's limit holds)."""
    compression.register(
        compress, bounded_decompressor(limit), MESSAGE_COMPRESSION, aliases=_ALIASES
    )
