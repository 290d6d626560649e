"""What a Redis queue entry must be for kombu to deliver it without raising.

Anyone who can reach the broker can push any bytes onto a queue list. kombu's Redis transport
decodes each entry as JSON and builds its ``Message`` from fields it assumes are there; an
entry that is not such an envelope raises inside the worker's event loop and ends the worker.
:func:`parse_entry` says whether an entry is deliverable, and :func:`unparsable_record` is
the bounded record kept of one that is not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Final

from agents_persistence.tasks.protocol.compression import MESSAGE_COMPRESSION
from kombu.utils.json import loads

__all__ = ["EXCERPT_BYTES", "envelope_shape_problem", "parse_entry", "unparsable_record"]

#: Raw bytes of an unparsable entry kept in its record.
EXCERPT_BYTES: Final = 16 * 1024


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def envelope_shape_problem(payload: Any) -> str | None:
    """Why ``payload`` (a decoded queue entry) is not a kombu envelope this transport can
    deliver without raising, or None.

    The fields are those kombu's virtual ``Message`` and the QoS read while delivering:
    ``properties`` (``delivery_tag``, ``delivery_info`` with ``exchange`` and
    ``routing_key``, ``body_encoding``), ``body``, ``content-type``, ``content-encoding``
    and ``headers``. A ``compression`` header other than the layer's zstd (which kombu
    inflates only within a bound, :mod:`agents_persistence.tasks.protocol.compression`) is
    refused here, before kombu decompresses.
    """
    if not isinstance(payload, dict):
        return f"entry is a JSON {type(payload).__name__}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "'properties' is not an object"
    if not _is_str(props.get("delivery_tag")) or not props["delivery_tag"]:
        return "'properties.delivery_tag' is not a non-empty string"
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        return "'properties.delivery_info' is not an object"
    if not all(_is_str(info.get(k)) for k in ("exchange", "routing_key")):
        return "'properties.delivery_info' lacks string 'exchange' and 'routing_key'"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not _is_str(payload[name]):
            return f"{name!r} is not a string"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "'headers' is not an object"
    if headers and "compression" in headers and headers["compression"] != MESSAGE_COMPRESSION:
        return "compressed body other than zstd (the layer compresses with zstd only)"
    body = payload.get("body")
    encoding = props.get("body_encoding")
    if body is None or body == "":
        return None
    if not _is_str(body):
        return "'body' is not a string"
    if encoding is None or encoding == "utf-8":
        return None
    if encoding != "base64":
        return f"'properties.body_encoding' {str(encoding)[:40]!r} is not base64"
    try:
        base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "'body' is not valid base64"
    return None


def parse_entry(raw: bytes) -> tuple[Any, str | None]:
    """A queue entry decoded, and why it cannot be delivered (None if it can)."""
    try:
        payload = loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "entry is not UTF-8"
    except Exception as exc:  # any text at all: kombu's object hook raises many kinds
        return None, f"entry is not kombu JSON ({type(exc).__name__})"
    return payload, envelope_shape_problem(payload)


def unparsable_record(raw: bytes, queue: str, reason: str) -> dict[str, Any]:
    """The bounded record of an entry that could not be delivered."""
    return {
        "reason": reason,
        "queue": queue[:1000],
        "raw_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "excerpt_base64": base64.b64encode(raw[:EXCERPT_BYTES]).decode("ascii"),
        "truncated": len(raw) > EXCERPT_BYTES,
    }
