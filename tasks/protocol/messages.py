"""What crosses the broker: plain JSON objects, checked field by field on arrival.

A save message (task ``agents_persistence.save_state``) carries keyword arguments::

    {"namespace": "agents", "thread_id": "t-1", "version": 1795807723460806506,
     "state": "<the snapshot's JSON, as a string>", "saved_at_ms": 1795807723460}

The snapshot travels as a JSON string so the worker can validate it and store the very
bytes the producer encoded (no re-encoding); a batch message
(``agents_persistence.save_states``) carries ``namespace`` and a list of ``entries`` with
the other four fields each. An entry that is not even an object is refused on its own;
its neighbours are still written.

Every field is bounded by the rules a save on the agent side obeys
(:mod:`agents_persistence.validation`): thread ids, versions (1 .. 2**63-1), save times
(0 .. year 9999 in ms), the snapshot (parsed by the load path's own parser, then held to
the same depth, integer and size limits). A message naming another namespace is
:class:`ForeignNamespace`: its dead letter belongs to that namespace's list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agents_persistence.checkpoint import PreparedSave
from agents_persistence.codec import Codec
from agents_persistence.errors import InvalidInput
from agents_persistence.validation import (
    MAX_SAVED_AT_MS,
    NAMESPACE_PATTERN,
    check_saved_at_ms,
    check_thread_id,
    check_version,
    describe_error,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "BadMessage",
    "ForeignNamespace",
    "batch_message",
    "entry_kwargs",
    "parse_batch",
    "parse_delete",
    "parse_entry",
    "parse_save",
    "save_entry",
    "save_message",
    "to_prepared",
]

_SAVE_FIELDS = ("namespace", "thread_id", "version", "state", "saved_at_ms")


class BadMessage(InvalidInput):
    """A message whose shape is wrong: arity, unknown or missing keys, types, ranges."""


class ForeignNamespace(BadMessage):
    """A well-formed message for another namespace than the worker's.

    Only possible where operators route two namespaces to one queue (each namespace has a
    queue of its own by default). ``namespace`` is the message's, a valid namespace: the
    worker records the dead letter in that namespace's list, where its operators look.
    """

    def __init__(self, namespace: str, expected: str) -> None:
        super().__init__(f"message for namespace {namespace!r} reached a worker of {expected!r}")
        self.namespace = namespace


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SaveEntry(_Strict):
    thread_id: str
    version: int
    state: str
    saved_at_ms: int = Field(ge=0, le=MAX_SAVED_AT_MS)


class SaveMessage(SaveEntry):
    namespace: str


class BatchMessage(_Strict):
    namespace: str
    entries: list[Any]  # each checked on its own: one bad entry spoils no other


class DeleteMessage(_Strict):
    namespace: str
    thread_id: str
    version: int


def save_message(namespace: str, save: PreparedSave) -> dict[str, Any]:
    """Keyword arguments of a save message for ``save``."""
    return {"namespace": namespace, **save_entry(save)}


def save_entry(save: PreparedSave) -> dict[str, Any]:
    """One entry of a batch message."""
    return {
        "thread_id": save.thread_id,
        "version": save.version,
        "state": save.body.decode("utf-8"),
        "saved_at_ms": save.saved_at_ms,
    }


def batch_message(namespace: str, saves: Sequence[PreparedSave]) -> dict[str, Any]:
    """Keyword arguments of a batch message."""
    return {"namespace": namespace, "entries": [save_entry(s) for s in saves]}


def _as_kwargs(args: Sequence[Any], kwargs: Mapping[str, Any], fields: Sequence[str]) -> Any:
    if len(args) > len(fields):
        raise BadMessage(f"expected at most {len(fields)} arguments, got {len(args)}")
    merged = dict(zip(fields, args, strict=False))
    overlap = merged.keys() & kwargs.keys()
    if overlap:
        raise BadMessage(f"arguments given twice: {sorted(overlap)}")
    merged.update(kwargs)
    return merged


def _check_namespace(got: str, expected: str) -> None:
    if got == expected:
        return
    if NAMESPACE_PATTERN.match(got):
        raise ForeignNamespace(got, expected)
    raise BadMessage(f"message names an invalid namespace; this worker serves {expected!r}")


def parse_save(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, namespace: str, codec: Codec
) -> PreparedSave:
    """Check a save message and turn it into a prepared save (raises InvalidInput)."""
    try:
        msg = SaveMessage.model_validate(_as_kwargs(args, kwargs, _SAVE_FIELDS))
    except ValidationError as exc:
        raise BadMessage(f"malformed save message: {describe_error(exc)}") from exc
    _check_namespace(msg.namespace, namespace)
    return to_prepared(msg, codec)


def parse_batch(args: Sequence[Any], kwargs: Mapping[str, Any], *, namespace: str) -> list[Any]:
    """Check a batch message's envelope; entries are checked one by one by the caller
    (:func:`parse_entry`)."""
    try:
        msg = BatchMessage.model_validate(_as_kwargs(args, kwargs, ("namespace", "entries")))
    except ValidationError as exc:
        raise BadMessage(f"malformed batch message: {describe_error(exc)}") from exc
    _check_namespace(msg.namespace, namespace)
    return msg.entries


def parse_entry(entry: Any, codec: Codec) -> PreparedSave:
    """Check one batch entry (raises InvalidInput)."""
    if not isinstance(entry, Mapping):
        raise BadMessage(f"batch entry is not an object but {type(entry).__name__}")
    try:
        msg = SaveEntry.model_validate(entry)
    except ValidationError as exc:
        raise BadMessage(f"malformed batch entry: {describe_error(exc)}") from exc
    return to_prepared(msg, codec)


def parse_delete(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, namespace: str
) -> DeleteMessage:
    """Check a delete message (raises InvalidInput)."""
    try:
        msg = DeleteMessage.model_validate(
            _as_kwargs(args, kwargs, ("namespace", "thread_id", "version"))
        )
    except ValidationError as exc:
        raise BadMessage(f"malformed delete message: {describe_error(exc)}") from exc
    _check_namespace(msg.namespace, namespace)
    check_thread_id(msg.thread_id)
    check_version(msg.version)
    return msg


def entry_kwargs(namespace: str, entry: Any) -> dict[str, Any]:
    """The keyword arguments of a single save message for one batch entry (its dead
    letter replays as one); an entry that is not an object is kept under ``entry``."""
    if isinstance(entry, Mapping):
        return {"namespace": namespace, **entry}
    return {"namespace": namespace, "entry": entry}


def to_prepared(msg: SaveEntry, codec: Codec) -> PreparedSave:
    """Validate the entry's thread id, version, save time and snapshot JSON."""
    check_thread_id(msg.thread_id)
    check_version(msg.version)
    check_saved_at_ms(msg.saved_at_ms)
    body = msg.state.encode("utf-8", "surrogatepass")
    codec.load_json(body)  # validates; the producer's bytes are what gets stored
    return PreparedSave(msg.thread_id, msg.version, body, msg.saved_at_ms)
