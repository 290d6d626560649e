"""Checks on what callers hand in, shared by every implementation, the worker and the codec.

One rule set: whatever a save accepts, a load reads back. Each bound below sits well inside
what the load path (pydantic's JSON parser, ``model_validate_json``) refuses, and is checked
at save time on the agent (``prepare``) and again by the worker on every message
(:meth:`Codec.load_json`), with a typed :class:`InvalidInput` error.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from agents_persistence.errors import InvalidSnapshot, InvalidThreadId, InvalidVersion
from agents_persistence.models import AgentStateSnapshot
from pydantic import ValidationError

__all__ = [
    "MAX_INT",
    "MAX_JSON_DEPTH",
    "MAX_SAVED_AT_MS",
    "MAX_THREAD_ID_LENGTH",
    "MAX_TTL_SECONDS",
    "MAX_VERSION",
    "MIN_INT",
    "NAMESPACE_PATTERN",
    "check_json_limits",
    "check_namespace",
    "check_saved_at_ms",
    "check_thread_id",
    "check_version",
    "coerce_snapshot",
    "describe_error",
]

#: Longest accepted thread id, in characters.
MAX_THREAD_ID_LENGTH: Final = 512
#: Versions are stored as 20 zero-padded digits and compared as strings; 2**63 - 1 keeps
#: them inside a signed 64-bit integer for every other language reading them.
MAX_VERSION: Final = 2**63 - 1
#: Latest save time a record header holds: the last millisecond of year 9999 (15 digits, so
#: it fits the header's 16; ``datetime`` reads nothing later).
MAX_SAVED_AT_MS: Final = 253_402_300_799_999
#: Longest TTL (state or tombstone): 100 years. Redis refuses an expiry whose unix-ms time
#: overflows 64 bits (``ttl=1e17`` s did), and the index scores expiries as doubles, exact
#: below 2**53 ms; both stay far away.
MAX_TTL_SECONDS: Final = 100 * 365 * 86_400
#: Deepest nesting of a snapshot's JSON document (the root object is level 1). The load
#: path's parser refuses documents deeper than 201 levels (measured: pydantic-core 2.x's
#: JSON parser; Python-side validation stops near 254); 128 leaves room for any change of it.
MAX_JSON_DEPTH: Final = 128
#: Integers a snapshot may hold: what a signed or unsigned 64-bit integer holds. orjson,
#: serde_json (the Rust crate) and every JSON library of note read these exactly; beyond
#: them orjson reads floats and Python refuses more than 4,300 digits.
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1

#: Namespaces become the first segment of every key; a ``:`` inside one would let two
#: namespaces overlap (``a`` + ``b:x`` vs ``a:b`` + ``x``), and a glob character would make
#: one namespace's SCAN pattern match another's keys, so both are refused. ``\Z``, not
#: ``$``: ``$`` also matches before a final newline.
NAMESPACE_PATTERN: Final = re.compile(r"\A[A-Za-z0-9_.\-]{1,64}\Z")

#: Unicode categories no thread id may hold: controls (Cc), invisible format characters
#: (Cf: zero-width spaces and joiners, bidi overrides, the BOM), line and paragraph
#: separators (Zl, Zp). An id that prints as another, or reorders a terminal line, is
#: refused rather than escaped at every place it could be shown.
_INVISIBLE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if usable as the first segment of keys, else raise ValueError.

    The message never repeats the value (it reaches configuration errors).
    """
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.match(namespace):
        raise ValueError("namespace must be 1-64 characters of letters, digits, '_', '.', '-'")
    return namespace


def check_thread_id(thread_id: object) -> str:
    """Return ``thread_id`` if usable as a thread id, else raise :class:`InvalidThreadId`.

    Refused: not a str, empty or whitespace only, above :data:`MAX_THREAD_ID_LENGTH`
    characters, control, invisible-format or separator characters (Unicode categories
    Cc, Cf, Zl, Zp: ``\\x1b``, ``\\u200b``, ``\\u202e``, ``\\ufeff``...), lone surrogates.
    """
    if not isinstance(thread_id, str):
        raise InvalidThreadId(f"thread id must be a str, not {type(thread_id).__name__}")
    if not thread_id or thread_id.isspace():
        raise InvalidThreadId("thread id is empty or only whitespace")
    if len(thread_id) > MAX_THREAD_ID_LENGTH:
        raise InvalidThreadId(
            f"thread id is {len(thread_id)} characters, above the limit of {MAX_THREAD_ID_LENGTH}"
        )
    # isprintable() is False for every character of those categories (and for a few
    # harmless ones, such as a no-break space): only then is each character looked at.
    if not thread_id.isprintable():
        for char in thread_id:
            category = unicodedata.category(char)
            if category in _INVISIBLE:
                raise InvalidThreadId(
                    f"thread id contains a control or invisible character "
                    f"(U+{ord(char):04X}, category {category})"
                )
    try:
        thread_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidThreadId("thread id is not valid unicode (lone surrogate)") from exc
    return thread_id


def check_version(version: object) -> int:
    """Return ``version`` if it is an int in ``1 .. MAX_VERSION``, else raise."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidVersion(f"version must be an int, not {type(version).__name__}")
    if not 1 <= version <= MAX_VERSION:
        raise InvalidVersion(f"version must be between 1 and {MAX_VERSION}, got {version}")
    return version


def check_saved_at_ms(saved_at_ms: object) -> int:
    """Return ``saved_at_ms`` if it is an int in ``0 .. MAX_SAVED_AT_MS``, else raise
    :class:`InvalidSnapshot` (a record header could not hold it)."""
    if isinstance(saved_at_ms, bool) or not isinstance(saved_at_ms, int):
        raise InvalidSnapshot(f"saved_at_ms must be an int, not {type(saved_at_ms).__name__}")
    if not 0 <= saved_at_ms <= MAX_SAVED_AT_MS:
        raise InvalidSnapshot(
            f"saved_at_ms must be between 0 and {MAX_SAVED_AT_MS} (year 9999), got {saved_at_ms}"
        )
    return saved_at_ms


#: How deep the free-form JSON values sit in a snapshot document: a scratchpad value's own
#: containers start at level 3 (root, ``scratchpad``), an interrupt's ``tool_args`` at 4
#: (root, ``pending_interrupts``, the interrupt).
_SCRATCHPAD_LEVEL: Final = 2
_TOOL_ARGS_LEVEL: Final = 3


def check_json_limits(state: AgentStateSnapshot) -> None:
    """Refuse a snapshot a load could not read back: :class:`InvalidSnapshot` if a JSON
    value nests deeper than :data:`MAX_JSON_DEPTH` (document levels), holds an integer
    outside ``MIN_INT .. MAX_INT`` or a NaN or infinity.

    Only the free-form values (``scratchpad``, interrupts' ``tool_args``) can hold any of
    them; the walk costs their node count (strings and sizes are the codec's size cap).
    It also refuses a mapping key with a lone surrogate (anywhere, ``files`` included): the
    serialiser refuses such a value, but writes such a key as U+FFFD, a silent change.
    """
    _check_keys(state.files)
    stack: list[tuple[object, int]] = [(state.scratchpad, _SCRATCHPAD_LEVEL)]
    stack.extend(
        (getattr(i, "tool_args", None), _TOOL_ARGS_LEVEL) for i in state.pending_interrupts
    )
    pop, push = stack.pop, stack.append
    while stack:
        value, level = pop()
        if isinstance(value, (str, bool)) or value is None:
            continue
        if isinstance(value, int):
            if not MIN_INT <= value <= MAX_INT:
                raise InvalidSnapshot(
                    f"snapshot holds an integer beyond 64 bits ({value.bit_length()} bits); "
                    "JSON readers cannot all read it back"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidSnapshot("snapshot holds NaN or Infinity, which JSON cannot carry")
        elif isinstance(value, (dict, list, tuple)):
            level += 1
            if level > MAX_JSON_DEPTH:
                raise InvalidSnapshot(f"snapshot JSON nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                _check_keys(value)
                value = value.values()
            for item in value:
                push((item, level))


def _check_keys(mapping: dict[Any, Any]) -> None:
    for key in mapping:
        if isinstance(key, str) and not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidSnapshot("snapshot holds a key with a lone surrogate") from exc


def coerce_snapshot(state: object) -> AgentStateSnapshot:
    """Accept a snapshot model or a JSON-shaped mapping; raise :class:`InvalidSnapshot`."""
    if isinstance(state, AgentStateSnapshot):
        return state
    if isinstance(state, Mapping):
        try:
            return AgentStateSnapshot.model_validate(_plain(state))
        except (ValidationError, RecursionError) as exc:
            raise InvalidSnapshot(f"invalid snapshot: {describe_error(exc)}") from exc
    raise InvalidSnapshot(
        f"state must be an AgentStateSnapshot or a mapping, not {type(state).__name__}"
    )


def _plain(state: Mapping[Any, Any]) -> dict[Any, Any]:
    return state if isinstance(state, dict) else dict(state)


def describe_error(exc: BaseException) -> str:
    """A short, input-free summary of a validation failure (safe to log)."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[:3]
        parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in first]
        more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        return "; ".join(parts) + more
    return "nesting too deep"
