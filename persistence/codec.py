"""How a snapshot becomes the bytes stored under its key, and back.

A record is a fixed 40-byte ASCII header followed by the body::

    offset  0  b"AP"      magic
            2  b"1"       envelope schema
            3  kind       b"j" JSON body, b"s" zstd-compressed JSON body, b"z" zlib-
                          compressed JSON body (written before zstd; read forever),
                          b"t" tombstone
            4  version    20 digits, zero padded (compared as a string by the Lua scripts)
           24  saved_at   16 digits, unix milliseconds, zero padded
           40  body       the snapshot's JSON (absent for a tombstone)

The compare-and-set script reads only the first 24 bytes (``GETRANGE``), so it never
decodes, copies or even loads the payload. A value that does not start with ``AP1`` is
envelope schema 0: the Rust crate's plain JSON, read as version 0 (any save replaces it).

Reading never trusts the stored bytes: a version above ``MAX_VERSION``, a save time past
year 9999, a body (inflated or not) above the size cap plus :data:`LOAD_MARGIN` are
:class:`CorruptState`, and a compressed body is inflated at most that far, so a few hundred
KB of zlib or zstd can never become hundreds of MB in memory. A zstd frame states its size
in its header: a size above the limit is refused before anything is allocated, and a frame
that does not state it is decoded into a buffer of the limit at most.

Compression (of bodies from ``compress_threshold`` bytes on) is zstd level 1 by default:
on agent state (code-like text) it stores about as small as zlib level 1 (~0.27x at 64 KB)
at 2-3x its speed, and inflates 4-5x faster. ``compression="zlib"`` writes zlib records
for readers of this library older than zstd records.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args

import orjson
import zstandard
from agents_persistence.errors import CorruptState, InvalidSnapshot, SnapshotTooLarge
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.validation import (
    MAX_VERSION,
    check_json_limits,
    check_saved_at_ms,
    check_version,
    describe_error,
)
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_MAX_SNAPSHOT_BYTES",
    "HEADER_SIZE",
    "LOAD_MARGIN",
    "MAGIC",
    "SAVED_AT_DIGITS",
    "VERSION_DIGITS",
    "VERSION_END",
    "VERSION_START",
    "Codec",
    "Compression",
    "Record",
    "format_version",
]

#: The header's layout (the module docstring draws it); the Lua scripts read the same bytes.
MAGIC: Final = b"AP1"
KIND_JSON: Final = b"j"
KIND_ZLIB: Final = b"z"
KIND_ZSTD: Final = b"s"
KIND_TOMBSTONE: Final = b"t"
KIND_AT: Final = len(MAGIC)
VERSION_START: Final = KIND_AT + 1
VERSION_DIGITS: Final = 20
#: Where the version ends: ``GETRANGE key 0 VERSION_END-1`` reads all a compare needs.
VERSION_END: Final = VERSION_START + VERSION_DIGITS
SAVED_AT_DIGITS: Final = 16
HEADER_SIZE: Final = VERSION_END + SAVED_AT_DIGITS
DEFAULT_MAX_SNAPSHOT_BYTES: Final = 16 * 1024 * 1024
DEFAULT_COMPRESS_THRESHOLD: Final = 16 * 1024
#: How far beyond ``max_snapshot_bytes`` a stored body may be (inflated) and still load: a
#: record written before the cap was lowered by up to a fifth still loads; anything
#: larger is CorruptState, never a larger allocation.
LOAD_MARGIN: Final = 0.25
#: What :class:`Codec` compresses large bodies with (both are always read).
Compression = Literal["zstd", "zlib"]
COMPRESSIONS: Final[tuple[str, ...]] = get_args(Compression)
DEFAULT_COMPRESSION: Final[Compression] = "zstd"
_ZLIB_LEVEL: Final = 1  # fast: agent state is mostly text; level 1 gets most of the gain
#: zstd level 1: as small as zlib level 1 on agent state, 2-3x faster (the module docstring).
_ZSTD_LEVEL: Final = 1
_SERIALIZER = AgentStateSnapshot.__pydantic_serializer__
#: ``model_validate_json`` without its wrapper: the body's bytes straight to pydantic-core.
_VALIDATOR = AgentStateSnapshot.__pydantic_validator__
#: From this much file text on, pydantic's to_json (~1 GB/s here) loses to pydantic's JSON-mode
#: dump + orjson (~5 GB/s); below it the extra Python objects cost more than they save.
_ORJSON_FROM: Final = 16 * 1024


def format_version(version: int) -> bytes:
    """The 20-digit form a version takes in headers and script arguments."""
    return b"%0*d" % (VERSION_DIGITS, version)


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record: a state, or a tombstone (``state is None``)."""

    version: int
    saved_at: datetime | None
    state: AgentStateSnapshot | None


class Codec:
    """Encodes snapshots (size cap, compression) and decodes stored records.

    Args:
        max_snapshot_bytes: largest accepted snapshot JSON; above it
            :class:`SnapshotTooLarge` is raised before anything is written.
        compress_threshold: compress JSON bodies of at least this many bytes;
            ``None`` never compresses. Reading handles every kind either way.
        compression: ``"zstd"`` (default) or ``"zlib"``: what compressed bodies are
            written with.
    """

    __slots__ = ("compress_threshold", "compression", "max_snapshot_bytes")

    def __init__(
        self,
        *,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        compression: Compression = DEFAULT_COMPRESSION,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        self.max_snapshot_bytes = max_snapshot_bytes
        self.compress_threshold = compress_threshold
        self.compression: Compression = compression

    # -- snapshot <-> JSON ------------------------------------------------------------------
    def dump_json(self, state: AgentStateSnapshot) -> bytes:
        """Serialise ``state`` to JSON, enforcing the size cap and the JSON limits that a
        load needs (:func:`~agents_persistence.validation.check_json_limits`)."""
        check_json_limits(state)
        body = _dump_large(state) if _text_size(state) >= _ORJSON_FROM else None
        if body is None:
            try:
                body = _SERIALIZER.to_json(state, warnings="error")
            except (PydanticSerializationError, RecursionError, ValueError) as exc:
                raise InvalidSnapshot(f"snapshot cannot be encoded as JSON: {exc}") from exc
        if len(body) > self.max_snapshot_bytes:
            raise SnapshotTooLarge(len(body), self.max_snapshot_bytes)
        return body

    def load_json(self, body: bytes | str) -> AgentStateSnapshot:
        """Parse and validate snapshot JSON from outside (a message); raise InvalidSnapshot.

        The body is parsed by the very parser a load uses (``model_validate_json``), then
        held to the limits a save is held to: what this accepts, a load reads back.
        """
        size = len(body)
        if size > self.max_snapshot_bytes:
            raise SnapshotTooLarge(size, self.max_snapshot_bytes)
        try:
            state = AgentStateSnapshot.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidSnapshot(_why_refused(exc)) from exc
        except (RecursionError, ValueError) as exc:
            raise InvalidSnapshot(f"invalid snapshot: {describe_error(exc)}") from exc
        check_json_limits(state)  # NaN, Infinity, integers beyond 64 bits, depth
        return state

    @property
    def load_limit(self) -> int:
        """Largest stored body (after inflating) a load reads: the cap plus its margin."""
        return self.max_snapshot_bytes + int(self.max_snapshot_bytes * LOAD_MARGIN)

    # -- records ------------------------------------------------------------------------------
    def pack(self, body: bytes, version: int, saved_at_ms: int) -> bytes:
        """Wrap snapshot JSON in a record header, compressing it above the threshold.

        Raises:
            InvalidVersion, InvalidSnapshot: a version or save time the header cannot hold.
        """
        self.check_header(version, saved_at_ms)
        kind = KIND_JSON
        if self.compress_threshold is not None and len(body) >= self.compress_threshold:
            if self.compression == "zstd":
                packed, packed_kind = _ZSTD.compressor.compress(body), KIND_ZSTD
            else:
                packed, packed_kind = zlib.compress(body, _ZLIB_LEVEL), KIND_ZLIB
            if len(packed) < len(body):
                body, kind = packed, packed_kind
        saved_at = b"%0*d" % (SAVED_AT_DIGITS, saved_at_ms)
        return b"".join((MAGIC, kind, format_version(version), saved_at, body))

    @staticmethod
    def check_header(version: int, saved_at_ms: int) -> None:
        """Raise :class:`InvalidVersion` / :class:`InvalidSnapshot` unless a record header can
        hold ``version`` and ``saved_at_ms`` (and a load read them back)."""
        check_version(version)
        check_saved_at_ms(saved_at_ms)

    def unpack(self, thread_id: str, raw: bytes) -> Record:
        """Decode the bytes stored for ``thread_id``; raise :class:`CorruptState` if unusable."""
        if not raw.startswith(MAGIC):
            return self._unpack_legacy(thread_id, raw)
        if len(raw) < HEADER_SIZE:
            raise CorruptState(thread_id, "truncated record header")
        return self._unpack_record(thread_id, raw, raw[HEADER_SIZE:])

    def unpack_split(self, thread_id: str, head: bytes, body: bytes) -> Record:
        """:meth:`unpack` of ``head + body`` read apart (the first 40 bytes, the rest).

        A large record read this way is never copied to drop its header.
        """
        if len(head) == HEADER_SIZE and head.startswith(MAGIC):
            return self._unpack_record(thread_id, head, body)
        return self.unpack(thread_id, head + body)

    def _unpack_record(self, thread_id: str, head: bytes, body: bytes) -> Record:
        kind = head[KIND_AT:VERSION_START]
        try:
            version = int(head[VERSION_START:VERSION_END])
            saved_ms = int(head[VERSION_END:HEADER_SIZE])
            saved_at = datetime.fromtimestamp(saved_ms / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError) as exc:  # digits, but beyond year 9999
            raise CorruptState(thread_id, "malformed record header") from exc
        if version > MAX_VERSION:
            raise CorruptState(thread_id, f"record version above {MAX_VERSION}")
        if kind == KIND_TOMBSTONE:
            return Record(version, saved_at, None)
        if kind == KIND_ZSTD:
            body = self._unzstd(thread_id, body)
        elif kind == KIND_ZLIB:
            body = self._inflate(thread_id, body)
        elif kind != KIND_JSON:
            raise CorruptState(thread_id, f"unknown record kind {kind!r}")
        return Record(version, saved_at, self._validate_stored(thread_id, body))

    def _inflate(self, thread_id: str, body: bytes) -> bytes:
        """Inflate a zlib body, never past :attr:`load_limit` bytes (a bomb stops there)."""
        limit = self.load_limit
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise CorruptState(thread_id, f"compressed body does not inflate: {exc}") from exc
        if len(out) > limit:
            raise CorruptState(
                thread_id, f"compressed body inflates beyond {limit} bytes (the size cap)"
            )
        if not inflater.eof:
            raise CorruptState(thread_id, "compressed body is truncated")
        return out

    def _unzstd(self, thread_id: str, body: bytes) -> bytes:
        """Decompress a zstd body (one frame, nothing after it), never past
        :attr:`load_limit` bytes: a frame stating a larger size is refused before anything
        is allocated; one stating none is decoded into at most the limit."""
        limit = self.load_limit
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise CorruptState(thread_id, f"compressed body does not inflate: {exc}") from exc
        if size > limit:
            raise CorruptState(
                thread_id, f"compressed body inflates beyond {limit} bytes (the size cap)"
            )
        try:
            return _ZSTD.decompressor.decompress(
                body, max_output_size=limit if size < 0 else 0, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            if size < 0 and "did not decompress full frame" in str(exc):
                raise CorruptState(
                    thread_id,
                    f"compressed body inflates beyond {limit} bytes (the size cap) or is "
                    "truncated",
                ) from exc
            raise CorruptState(thread_id, f"compressed body does not inflate: {exc}") from exc

    def _unpack_legacy(self, thread_id: str, raw: bytes) -> Record:
        if raw[:2] == b"AP" and raw[2:3].isdigit():
            raise CorruptState(
                thread_id, f"envelope schema {raw[2:3].decode()} is newer than this library"
            )
        if not raw.lstrip()[:1] == b"{":
            raise CorruptState(thread_id, "not a record and not snapshot JSON")
        return Record(0, None, self._validate_stored(thread_id, raw))

    def _validate_stored(self, thread_id: str, body: bytes) -> AgentStateSnapshot:
        if len(body) > self.load_limit:
            raise CorruptState(
                thread_id, f"body of {len(body)} bytes is beyond {self.load_limit} (the size cap)"
            )
        try:
            return _VALIDATOR.validate_json(body)  # type: ignore[no-any-return]
        except (ValidationError, RecursionError, ValueError) as exc:
            reason = f"body does not validate: {describe_error(exc)}"
            raise CorruptState(thread_id, reason) from exc


class _Zstd(threading.local):
    """This thread's zstd contexts: a context must not be used by two threads at once, and
    making one per call costs more than compressing 16 KB."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_ZSTD = _Zstd()


def _why_refused(exc: ValidationError) -> str:
    """What :meth:`Codec.load_json` says of a body the parser or the model refused."""
    first = exc.errors(include_input=False, include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"snapshot is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    if first["type"] == "model_type" and not first["loc"]:
        return "snapshot JSON must be an object"
    return f"invalid snapshot: {describe_error(exc)}"


def _text_size(state: AgentStateSnapshot) -> int:
    """Characters of file text: what makes a snapshot large, counted without encoding it."""
    try:
        return sum(map(len, state.files.values()))
    except TypeError:  # not str values (a model changed after validation): to_json decides
        return 0


def _dump_large(state: AgentStateSnapshot) -> bytes | None:
    """The same bytes as pydantic's ``to_json``, several times faster for large states.

    pydantic turns the model into JSON-ready Python (the same checks: ``warnings="error"``
    refuses what ``to_json`` refuses) and orjson writes it: identical output (compact,
    UTF-8, the same string escapes, floats, ``Z`` datetimes, and the model serializer that
    omits empty interrupts). NaN would become ``null`` here, but
    :func:`~agents_persistence.validation.check_json_limits` refused it beforehand.
    Anything either step refuses (lone surrogates, a set...) returns None: ``to_json``
    then decides.
    """
    try:
        return orjson.dumps(state.model_dump(mode="json", warnings="error"))
    except (PydanticSerializationError, RecursionError, ValueError, TypeError):
        return None
