"""The byte layouts the saver stores (pure functions, no I/O).

Every variable-length part is a netstring, ``<length>:<bytes>`` (length in decimal bytes):
self-delimiting, binary-safe, and parsed in Lua with two string functions, so no value has a
forbidden character. ``serde`` types and bytes are LangGraph's (``dumps_typed``).

* checkpoint record (``cp`` hash): ``ns(type) ns(bytes) ns(metadata type) ns(metadata bytes)``
  of the checkpoint without ``channel_values``;
* link (``link`` hash): ``ns(parent id) ns(run id) ns(blob field)...`` (read by Lua);
* blob field: ``ns(channel) version``; blob value: ``ns(type) bytes``, or ``b""`` for a
  channel without a value at that version;
* pending write member: ``ns(checkpoint id) ns(task id) ns(idx) | ns(channel) ns(type)
  ns(task path) bytes``; everything before ``|`` identifies the write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "Link",
    "Write",
    "blob_field",
    "blob_value",
    "decode_blob",
    "decode_blob_value",
    "decode_link",
    "decode_record",
    "decode_write",
    "encode_link",
    "encode_record",
    "netstring",
    "run_member",
    "split",
    "write_key",
    "write_member",
]

Typed = tuple[str, bytes]


def _b(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def netstring(value: str | bytes) -> bytes:
    """``<length>:<bytes>``."""
    raw = _b(value)
    return b"%d:%s" % (len(raw), raw)


def _parts(data: bytes, start: int = 0) -> Iterator[tuple[bytes, int]]:
    """Each netstring of ``data`` from ``start`` with the offset after it."""
    pos, end = start, len(data)
    while pos < end:
        colon = data.index(b":", pos)
        length = int(data[pos:colon])
        pos = colon + 1 + length
        if pos > end:
            raise ValueError("truncated netstring")
        yield data[colon + 1 : pos], pos


def split(data: bytes, count: int, start: int = 0) -> tuple[list[bytes], int]:
    """The first ``count`` netstrings of ``data`` and the offset after them."""
    out: list[bytes] = []
    pos = start
    if count:
        for part, pos in _parts(data, start):  # noqa: B007 - pos is the result
            out.append(part)
            if len(out) == count:
                break
    if len(out) != count:
        raise ValueError(f"expected {count} netstrings, found {len(out)}")
    return out, pos


# -- checkpoints ----------------------------------------------------------------------------------
def encode_record(checkpoint: Typed, metadata: Typed) -> bytes:
    """The checkpoint record."""
    return b"".join(
        (netstring(checkpoint[0]), netstring(checkpoint[1]), netstring(metadata[0]),
         netstring(metadata[1]))
    )  # fmt: skip


def decode_record(data: bytes) -> tuple[Typed, Typed]:
    """``(checkpoint, metadata)``, each ``(type, bytes)``."""
    (ctype, cbytes, mtype, mbytes), _ = split(data, 4)
    return (ctype.decode(), cbytes), (mtype.decode(), mbytes)


@dataclass(frozen=True, slots=True)
class Link:
    """What the Lua scripts know of a checkpoint."""

    parent: str | None
    run_id: str | None
    fields: tuple[bytes, ...]


def encode_link(parent: str | None, run_id: str | None, fields: Sequence[bytes]) -> bytes:
    """The link record."""
    return b"".join(
        (netstring(parent or ""), netstring(run_id or ""), *(netstring(f) for f in fields))
    )


def decode_link(data: bytes) -> Link:
    """Parse a link record."""
    (parent, run_id), pos = split(data, 2)
    fields = tuple(part for part, _ in _parts(data, pos))
    return Link(parent.decode() or None, run_id.decode() or None, fields)


# -- blobs ----------------------------------------------------------------------------------------
def blob_field(channel: str, version: str | int | float) -> bytes:
    """The blob hash field of (channel, version)."""
    return netstring(channel) + str(version).encode("utf-8")


def blob_value(typed: Typed | None) -> bytes:
    """A stored blob; ``None`` (no value at this version) is ``b""``."""
    if typed is None:
        return b""
    return netstring(typed[0]) + typed[1]


def decode_blob(field: bytes, value: bytes) -> tuple[str, Typed | None]:
    """``(channel, typed value or None)``."""
    (channel,), _ = split(field, 1)
    return channel.decode(), decode_blob_value(value)


def decode_blob_value(value: bytes) -> Typed | None:
    """A stored blob's typed value, or None for a channel without one."""
    if not value:
        return None
    (vtype,), pos = split(value, 1)
    return vtype.decode(), value[pos:]


# -- pending writes -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Write:
    """One pending write as stored."""

    checkpoint_id: str
    task_id: str
    idx: int
    channel: str
    value: Typed
    task_path: str

    @property
    def sort_key(self) -> tuple[str, str, int]:
        """LangGraph's ``writes_sort_key``: ``(task_path, task_id, idx)``."""
        return (self.task_path, self.task_id, self.idx)


def write_key(checkpoint_id: str, task_id: str, idx: int) -> bytes:
    """What identifies a write: the part of its member before ``|``."""
    return netstring(checkpoint_id) + netstring(task_id) + netstring(str(idx))


def write_member(channel: str, value: Typed, task_path: str) -> bytes:
    """The part of a write's member after ``|``."""
    return netstring(channel) + netstring(value[0]) + netstring(task_path) + value[1]


def decode_write(member: bytes) -> Write:
    """Parse a pending write member."""
    (checkpoint_id, task_id, idx), pos = split(member, 3)
    if member[pos : pos + 1] != b"|":
        raise ValueError("pending write without its separator")
    (channel, vtype, task_path), pos = split(member, 3, pos + 1)
    return Write(
        checkpoint_id.decode(),
        task_id.decode(),
        int(idx),
        channel.decode(),
        (vtype.decode(), member[pos:]),
        task_path.decode(),
    )


# -- runs -----------------------------------------------------------------------------------------
def run_member(run_id: str, checkpoint_ns: str, checkpoint_id: str) -> bytes:
    """The ``runs`` member of one checkpoint."""
    return netstring(run_id) + netstring(checkpoint_ns) + checkpoint_id.encode("utf-8")
