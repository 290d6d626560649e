"""Every Redis key this package touches, built in one place.

Layout for namespace ``ns`` (namespaces never contain ``:``, so the first segment of a key
always names its namespace and no thread id can reach another namespace's keys):

``ns:thread:<thread id>``
    The thread's record: an envelope (see :mod:`persistence.codec`) holding either the
    state or a tombstone. The same key as the Rust crate, so its plain-JSON states load.
``ns:index``
    Sorted set of live thread ids scored by expiry time in unix milliseconds (``+inf``
    without TTL). Listing skips scores in the past; cleanup removes only those.
    (The Rust crate's ``ns:threads`` is a plain set; a different name keeps both usable.)
``ns:staging``
    Scratch key a save writes its payload to inside the same MULTI/EXEC as the
    compare-and-set script, which RENAMEs it into place (so the payload never passes
    through Lua). It only exists inside a transaction, or briefly after a failed one.
``ns:deadletter``
    List of dead-lettered hand-offs (JSON), newest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents_persistence.validation import check_namespace

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace."""

    namespace: str

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def thread_prefix(self) -> str:
        """Prefix of every thread record key (``ns:thread:``)."""
        return f"{self.namespace}:thread:"

    def thread(self, thread_id: str) -> str:
        """Key of one thread's record."""
        return f"{self.namespace}:thread:{thread_id}"

    @property
    def index(self) -> str:
        """Sorted set of live thread ids, scored by expiry (unix ms)."""
        return f"{self.namespace}:index"

    @property
    def staging(self) -> str:
        """Scratch key for the payload of the save being applied."""
        return f"{self.namespace}:staging"

    @property
    def dead_letters(self) -> str:
        """List of dead-lettered hand-offs."""
        return f"{self.namespace}:deadletter"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this namespace."""
        return f"{self.namespace}:*"
