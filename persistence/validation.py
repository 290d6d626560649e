"""Checks on what callers hand in, shared by every implementation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agents_persistence.errors import InvalidSnapshot, InvalidThreadId, InvalidVersion
from agents_persistence.models import AgentStateSnapshot
from pydantic import ValidationError

__all__ = [
    "MAX_THREAD_ID_LENGTH",
    "MAX_VERSION",
    "NAMESPACE_PATTERN",
    "check_namespace",
    "check_thread_id",
    "check_version",
    "coerce_snapshot",
    "describe_error",
]

#: Longest accepted thread id, in characters.
MAX_THREAD_ID_LENGTH = 512
#: Versions are stored as 20 zero-padded digits and compared as strings; 2**63 - 1 keeps
#: them inside a signed 64-bit integer for every other language reading them.
MAX_VERSION = 2**63 - 1

#: Namespaces become the first segment of every key; a ``:`` inside one would let two
#: namespaces overlap (``a`` + ``b:x`` vs ``a:b`` + ``x``), and a glob character would make
#: one namespace's SCAN pattern match another's keys, so both are refused.
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if usable as the first segment of keys, else raise ValueError.

    The message never repeats the value (it reaches configuration errors).
    """
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.match(namespace):
        raise ValueError("namespace must be 1-64 characters of letters, digits, '_', '.', '-'")
    return namespace


def check_thread_id(thread_id: object) -> str:
    """Return ``thread_id`` if usable as a thread id, else raise :class:`InvalidThreadId`."""
    if not isinstance(thread_id, str):
        raise InvalidThreadId(f"thread id must be a str, not {type(thread_id).__name__}")
    if not thread_id or thread_id.isspace():
        raise InvalidThreadId("thread id is empty or only whitespace")
    if len(thread_id) > MAX_THREAD_ID_LENGTH:
        raise InvalidThreadId(
            f"thread id is {len(thread_id)} characters, above the limit of {MAX_THREAD_ID_LENGTH}"
        )
    if _CONTROL.search(thread_id):
        raise InvalidThreadId("thread id contains control characters")
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
