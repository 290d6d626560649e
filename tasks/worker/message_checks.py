"""What a task message must be before Celery's consumer may see it.

Celery reads a protocol-2 message's headers, properties and delivery info in the worker's
main process (``celery.worker.strategy`` and ``celery.worker.request.Request.__init__``),
outside any task: a value of an unexpected type raises there and ends the worker (an
"Unrecoverable error"), and the message, given back, ends the next worker too. Some values
Celery accepts are silent drops or endless loops instead: an ``expires`` in the past is
discarded as revoked, an ``eta`` that overflows is rejected without a trace, and an ``eta``
beyond the broker's visibility timeout is redelivered again and again while it waits.

:func:`envelope_problem` checks all of it against what the layer's own producers send and
says why a message is refused; :mod:`agents_persistence.tasks.worker.consumer` dead-letters
those before Celery sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from agents_persistence.tasks.protocol.compression import MESSAGE_COMPRESSION
from kombu.exceptions import ContentDisallowed, DecodeError

__all__ = ["MessageLimits", "envelope_problem"]

#: Workflow fields of a task message body's third element; the layer never sends them, and
#: honouring them would let a message start other tasks after ours.
_EMBED_KEYS: Final = frozenset({"callbacks", "errbacks", "chain", "chord"})
#: Longest string header (ids, task names, reprs: the layer's are far shorter).
_MAX_HEADER_CHARS: Final = 4096
#: Headers Celery reads that must be a string or absent/None.
_OPTIONAL_STR: Final = (
    "lang", "shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin",
)  # fmt: skip
#: Message properties Celery reads that must be a string or absent/None.
_OPTIONAL_STR_PROPERTIES: Final = ("reply_to", "correlation_id")
#: Largest time limit or retry count the layer could send.
_MAX_LIMIT_SECONDS: Final = 10**7
_MAX_RETRIES: Final = 10**6


@dataclass(frozen=True)
class MessageLimits:
    """What the serving worker allows of a message's time headers.

    Attributes:
        max_eta_seconds: how far ahead an ``eta`` may lie (the worker holds the message
            unacknowledged until then, and the broker redelivers it after its visibility
            timeout).
        never_expire: task names whose ``expires`` is left to Celery (a periodic task whose
            expired runs are meant to be dropped).
    """

    max_eta_seconds: float
    never_expire: frozenset[str] = frozenset()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _header_type_problem(headers: dict[str, Any], properties: Any, delivery: Any) -> str | None:
    if not isinstance(headers["task"], str) or len(headers["task"]) > _MAX_HEADER_CHARS:
        return "header 'task' is not a string"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > _MAX_HEADER_CHARS:
        return "header 'id' is not a non-empty string"
    if not isinstance(properties, dict):
        return "message properties are not an object"
    if not isinstance(delivery, dict):
        return "message delivery info is not an object"
    for where, fields, names in (
        ("header", headers, _OPTIONAL_STR),
        ("property", properties, _OPTIONAL_STR_PROPERTIES),
    ):
        for name in names:
            value = fields.get(name)
            if value is not None and (
                not isinstance(value, str) or len(value) > _MAX_HEADER_CHARS
            ):
                return f"{where} {name!r} is not a string of at most {_MAX_HEADER_CHARS} chars"
    retries = headers.get("retries", 0)
    if not _is_int(retries) or not 0 <= retries <= _MAX_RETRIES:
        return "header 'retries' is not a non-negative integer"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, (list, tuple))
        and len(limits) == 2
        and all(v is None or (_is_number(v) and 0 <= v <= _MAX_LIMIT_SECONDS) for v in limits)
    ):
        return "header 'timelimit' is not a pair of numbers"
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"], bool):
        return "header 'ignore_result' is not a boolean"
    for name, kind in (("stamps", dict), ("stamped_headers", list), ("groups", list)):
        if headers.get(name) is not None and not isinstance(headers[name], kind):
            return f"header {name!r} is not a {kind.__name__}"
    if not all(isinstance(s, str) for s in headers.get("stamped_headers") or ()):
        return "header 'stamped_headers' is not a list of strings"
    for name in ("group_index", "replaced_task_nesting"):
        if headers.get(name) is not None and not _is_int(headers[name]):
            return f"header {name!r} is not an integer"
    priority = properties.get("priority")
    if priority is not None and not (_is_int(priority) and 0 <= priority <= 255):
        return "property 'priority' is not an integer 0-255"
    for name in ("exchange", "routing_key"):
        if delivery.get(name) is not None and not isinstance(delivery[name], str):
            return f"delivery info {name!r} is not a string"
    if delivery.get("redelivered") is not None and not isinstance(delivery["redelivered"], bool):
        return "delivery info 'redelivered' is not a boolean"
    return None


def _when(headers: dict[str, Any], name: str) -> tuple[datetime | None, str | None]:
    value = headers.get(name)
    if value is None:
        return None, None
    if not isinstance(value, str) or len(value) > 64:
        return None, f"header {name!r} is not an ISO 8601 string"
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None or when.utcoffset() is None:
            when = when.replace(tzinfo=UTC)  # the app is UTC: so are naive times
        when.astimezone(UTC).timestamp()
    except (ValueError, OverflowError, TypeError) as exc:
        return None, f"header {name!r} is not a usable date ({type(exc).__name__})"
    return when, None


def _time_problem(headers: dict[str, Any], limits: MessageLimits, now: datetime) -> str | None:
    eta, problem = _when(headers, "eta")
    if problem is not None:
        return problem
    expires, problem = _when(headers, "expires")
    if problem is not None:
        return problem
    if eta is not None and (eta - now).total_seconds() > limits.max_eta_seconds:
        return (
            f"eta beyond the visibility timeout: {(eta - now).total_seconds():.0f} s ahead "
            f"(at most {limits.max_eta_seconds:.0f} s)"
        )
    if expires is not None and expires <= now and headers["task"] not in limits.never_expire:
        return "expired: header 'expires' is in the past"
    return None


def _body_problem(message: Any) -> str | None:
    try:
        body = message.payload
    except (DecodeError, ContentDisallowed):
        return None  # Celery reports it through on_decode_error / on_invalid_task
    if not (
        isinstance(body, (list, tuple))
        and len(body) == 3
        and isinstance(body[0], (list, tuple))
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    ):
        return "task message body is not [args, kwargs, embed]"
    embed = body[2] or {}
    unexpected = sorted(str(k) for k, v in embed.items() if k not in _EMBED_KEYS or v)
    if unexpected:
        return f"task message asks for workflow fields the layer never sends: {unexpected}"
    return None


def envelope_problem(
    message: Any, limits: MessageLimits | None = None, now: datetime | None = None
) -> str | None:
    """Why a Celery task message is not one the layer could have sent, or None.

    Checks every header, property and delivery field Celery reads in the main process, the
    body's ``[args, kwargs, embed]`` shape, and (with ``limits``) the time headers against
    ``now`` (default: the current time). Messages whose body cannot be decoded or whose
    content type is refused are left to Celery, which reports them to the consumer.
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        try:
            body = message.payload
        except (DecodeError, ContentDisallowed):
            return None
        if isinstance(body, dict) and "task" in body:
            return "task message of protocol 1 (the layer sends protocol 2 only)"
        return None  # not a task message: Celery reports it as unknown
    if "compression" in headers and headers["compression"] != MESSAGE_COMPRESSION:
        return "compressed body other than zstd (the layer compresses with zstd only)"
    problem = _header_type_problem(headers, message.properties, message.delivery_info)
    if problem is None and limits is not None:
        problem = _time_problem(headers, limits, now or datetime.now(UTC))
    elif problem is None:
        problem = _when(headers, "eta")[1] or _when(headers, "expires")[1]
    return problem or _body_problem(message)
