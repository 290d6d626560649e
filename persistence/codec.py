"""How a snapshot becomes the bytes stored under its key, and back.

A record is a fixed 40-byte ASCII header followed by the body::

    offset  0  b"AP"      magic
            2  b"1"       envelope schema
            3  kind       b"j" JSON body, b"z" zlib-compressed JSON body, b"t" tombstone
            4  version    20 digits, zero padded (compared as a string by the Lua scripts)
           24  saved_at   16 digits, unix milliseconds, zero padded
           40  body       the snapshot's JSON (absent for a tombstone)

The compare-and-set script reads only the first 24 bytes (``GETRANGE``), so it never
decodes, copies or even loads the payload. A value that does not start with ``AP1`` is
envelope schema 0: the Rust crate's plain JSON, read as version 0 (any save replaces it).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson
from agents_persistence.errors import CorruptState, InvalidSnapshot, SnapshotTooLarge
from agents_persistence.models import AgentStateSnapshot
from agents_persistence.validation import describe_error
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_MAX_SNAPSHOT_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "SAVED_AT_DIGITS",
    "VERSION_DIGITS",
    "VERSION_END",
    "VERSION_START",
    "Codec",
    "Record",
    "format_version",
]

#: The header's layout (the module docstring draws it); the Lua scripts read the same bytes.
MAGIC: Final = b"AP1"
KIND_JSON: Final = b"j"
KIND_ZLIB: Final = b"z"
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
_ZLIB_LEVEL: Final = 1  # fast: agent state is mostly text; level 1 gets most of the gain
_SERIALIZER = AgentStateSnapshot.__pydantic_serializer__
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
        compress_threshold: compress JSON bodies of at least this many bytes with zlib;
            ``None`` never compresses. Reading handles both either way.
    """

    __slots__ = ("compress_threshold", "max_snapshot_bytes")

    def __init__(
        self,
        *,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
    ) -> None:
        self.max_snapshot_bytes = max_snapshot_bytes
        self.compress_threshold = compress_threshold

    # -- snapshot <-> JSON ------------------------------------------------------------------
    def dump_json(self, state: AgentStateSnapshot) -> bytes:
        """Serialise ``state`` to JSON, enforcing the size cap and strict JSON values."""
        body = _dump_large(state) if _text_size(state) >= _ORJSON_FROM else None
        if body is None:
            try:
                body = _SERIALIZER.to_json(state, warnings="error")
            except (PydanticSerializationError, RecursionError, ValueError) as exc:
                raise InvalidSnapshot(f"snapshot cannot be encoded as JSON: {exc}") from exc
        if _has_non_finite(state):
            raise InvalidSnapshot("snapshot holds NaN or Infinity, which JSON cannot carry")
        if len(body) > self.max_snapshot_bytes:
            raise SnapshotTooLarge(len(body), self.max_snapshot_bytes)
        return body

    def load_json(self, body: bytes | str) -> AgentStateSnapshot:
        """Parse and validate snapshot JSON from outside (a message); raise InvalidSnapshot."""
        size = len(body)
        if size > self.max_snapshot_bytes:
            raise SnapshotTooLarge(size, self.max_snapshot_bytes)
        try:
            data = orjson.loads(body)  # strict JSON: refuses NaN, Infinity, bad UTF-8
        except orjson.JSONDecodeError as exc:
            raise InvalidSnapshot(f"snapshot is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidSnapshot(f"snapshot JSON must be an object, not {type(data).__name__}")
        try:
            return AgentStateSnapshot.model_validate(data)
        except (ValidationError, RecursionError) as exc:
            raise InvalidSnapshot(f"invalid snapshot: {describe_error(exc)}") from exc

    # -- records ------------------------------------------------------------------------------
    def pack(self, body: bytes, version: int, saved_at_ms: int) -> bytes:
        """Wrap snapshot JSON in a record header, compressing it above the threshold."""
        kind = KIND_JSON
        if self.compress_threshold is not None and len(body) >= self.compress_threshold:
            packed = zlib.compress(body, _ZLIB_LEVEL)
            if len(packed) < len(body):
                body, kind = packed, KIND_ZLIB
        saved_at = b"%0*d" % (SAVED_AT_DIGITS, saved_at_ms)
        return b"".join((MAGIC, kind, format_version(version), saved_at, body))

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
        if kind == KIND_TOMBSTONE:
            return Record(version, saved_at, None)
        if kind == KIND_ZLIB:
            try:
                body = zlib.decompress(body)
            except zlib.error as exc:
                raise CorruptState(thread_id, f"compressed body does not inflate: {exc}") from exc
        elif kind != KIND_JSON:
            raise CorruptState(thread_id, f"unknown record kind {kind!r}")
        return Record(version, saved_at, self._validate_stored(thread_id, body))

    def _unpack_legacy(self, thread_id: str, raw: bytes) -> Record:
        if raw[:2] == b"AP" and raw[2:3].isdigit():
            raise CorruptState(
                thread_id, f"envelope schema {raw[2:3].decode()} is newer than this library"
            )
        if not raw.lstrip()[:1] == b"{":
            raise CorruptState(thread_id, "not a record and not snapshot JSON")
        return Record(0, None, self._validate_stored(thread_id, raw))

    @staticmethod
    def _validate_stored(thread_id: str, body: bytes) -> AgentStateSnapshot:
        try:
            return AgentStateSnapshot.model_validate_json(body)
        except (ValidationError, RecursionError, ValueError) as exc:
            reason = f"body does not validate: {describe_error(exc)}"
            raise CorruptState(thread_id, reason) from exc


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
    omits empty interrupts). NaN would become ``null`` here; :func:`_has_non_finite`
    refuses it afterwards either way. Anything either step refuses (integers beyond 64
    bits, lone surrogates, deep nesting...) returns None: ``to_json`` then decides.
    """
    try:
        return orjson.dumps(state.model_dump(mode="json", warnings="error"))
    except (PydanticSerializationError, RecursionError, ValueError, TypeError):
        return None


def _has_non_finite(state: AgentStateSnapshot) -> bool:
    """True if a JSON-valued field holds NaN or an infinity (a model changed after validation).

    The serialiser (``warnings="error"``) already refuses a float anywhere the model does not
    allow one, so only the free-form JSON values (``scratchpad``, interrupts' ``tool_args``)
    can hide one. Walking them costs their node count; scanning the encoded body for
    ``NaN``/``Infinity`` cost ~2 ms per MB of file text, more than encoding it.
    """
    stack: list[object] = [state.scratchpad]
    stack.extend(getattr(i, "tool_args", None) for i in state.pending_interrupts)
    pop, extend = stack.pop, stack.extend
    while stack:
        value = pop()
        if type(value) is str:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                return True
        elif isinstance(value, dict):
            extend(value.values())
        elif isinstance(value, (list, tuple)):
            extend(value)
    return False
