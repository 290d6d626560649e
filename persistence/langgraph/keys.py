"""Every Redis key of the LangGraph saver, built in one place.

Layout for store namespace ``ns``, LangGraph thread ``T`` and checkpoint namespace ``C``
(LangGraph's ``checkpoint_ns``: ``""`` for the root graph, ``"node:<task id>"``... for
subgraphs). ``{t}`` is the thread's hash tag (:func:`hash_tag`), so every key of one thread
lives in one Redis Cluster slot and one Lua script or MULTI can touch them all:

``ns:lg:thread:{t}``
    Hash ``C -> T``: the checkpoint namespaces the thread has (and its id, for listings).
``ns:lg:runs:{t}``
    Sorted set (all scores 0, ordered by member) of ``run . C . checkpoint id`` (each a
    :func:`~agents_persistence.langgraph.records.netstring`): which checkpoints each run made.
``ns:lg:ids:{t}:C``
    Sorted set (all scores 0) of checkpoint ids. LangGraph's ids are UUIDv6 strings of one
    length, so member order is time order: ZREVRANGEBYLEX lists newest first.
``ns:lg:cp:{t}:C``
    Hash ``checkpoint id -> record`` (checkpoint without its values, metadata).
``ns:lg:link:{t}:C``
    Hash ``checkpoint id -> link``: parent id, run id and the blob fields the checkpoint
    reads (the only record the Lua scripts parse).
``ns:lg:blob:{t}:C``
    Hash ``channel . version -> value``: one field per (channel, version), shared by every
    checkpoint that saw that version (LangGraph's blobs; an empty string marks a channel that
    had no value at that version).
``ns:lg:write:{t}:C``
    Sorted set (all scores 0) of pending writes ``checkpoint id . task id . idx | payload``:
    the writes of one checkpoint are one lexicographic range.
``ns:lg:run:{r}``
    Set of the thread ids a run wrote to (hash tag of the run id): the only key outside a
    thread's slot, written in the same round trip (in the same MULTI on a single server).

The Lua scripts receive the prefixes of the per-namespace keys (:meth:`ThreadKeys.prefixes`)
and only append ``C`` to them, so no key is spelled anywhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agents_persistence.validation import check_namespace

__all__ = ["KINDS", "SaverKeys", "ThreadKeys", "hash_tag"]

#: The per-namespace keys of a thread, in the order the Lua scripts receive their prefixes.
KINDS = ("ids", "cp", "link", "blob", "write")


def hash_tag(value: str) -> str:
    """``{value}``, the Redis Cluster hash tag of a thread (or run) id.

    A value holding ``}`` would end the tag early, and one starting with ``#`` could pose as
    the digest form: both are replaced by ``#`` and their SHA-256, which no raw value yields.
    """
    if "}" in value or value.startswith("#"):
        value = "#" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    return "{" + value + "}"


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The keys of one thread."""

    base: str
    tag: str

    @property
    def registry(self) -> str:
        """Hash of the thread's checkpoint namespaces."""
        return f"{self.base}thread:{self.tag}"

    @property
    def runs(self) -> str:
        """Sorted set of (run, checkpoint namespace, checkpoint id)."""
        return f"{self.base}runs:{self.tag}"

    def prefixes(self) -> list[str]:
        """Prefixes of the per-namespace keys, in :data:`KINDS` order (Lua appends ``C``)."""
        return [f"{self.base}{kind}:{self.tag}:" for kind in KINDS]

    def ids(self, checkpoint_ns: str) -> str:
        """Sorted set of the checkpoint ids of one checkpoint namespace."""
        return f"{self.base}ids:{self.tag}:{checkpoint_ns}"

    def checkpoints(self, checkpoint_ns: str) -> str:
        """Hash of checkpoint records."""
        return f"{self.base}cp:{self.tag}:{checkpoint_ns}"

    def links(self, checkpoint_ns: str) -> str:
        """Hash of checkpoint links (parent, run, blob fields)."""
        return f"{self.base}link:{self.tag}:{checkpoint_ns}"

    def blobs(self, checkpoint_ns: str) -> str:
        """Hash of channel values by (channel, version)."""
        return f"{self.base}blob:{self.tag}:{checkpoint_ns}"

    def writes(self, checkpoint_ns: str) -> str:
        """Sorted set of pending writes."""
        return f"{self.base}write:{self.tag}:{checkpoint_ns}"

    def namespace_keys(self, checkpoint_ns: str) -> list[str]:
        """The five keys of one checkpoint namespace, in :data:`KINDS` order."""
        return [prefix + checkpoint_ns for prefix in self.prefixes()]


@dataclass(frozen=True, slots=True)
class SaverKeys:
    """Key builder for one store namespace."""

    namespace: str

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def base(self) -> str:
        """Prefix of every key of the saver (``ns:lg:``)."""
        return f"{self.namespace}:lg:"

    def thread(self, thread_id: str) -> ThreadKeys:
        """The keys of one thread."""
        return ThreadKeys(self.base, hash_tag(thread_id))

    def run(self, run_id: str) -> str:
        """Set of the threads a run wrote to."""
        return f"{self.base}run:{hash_tag(run_id)}"

    @property
    def registry_pattern(self) -> str:
        """SCAN pattern matching every thread's registry (one key per thread)."""
        return f"{self.base}thread:*"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of the saver."""
        return f"{self.base}*"
