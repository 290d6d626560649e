"""Counting network round trips between a redis-py client and its server.

A round trip is one write of packed commands to the socket followed by reading the replies:
one ``send_packed_command`` call. A pipeline or a MULTI/EXEC transaction is one round trip
however many commands it carries. :func:`counting_connection_class` makes a
``redis.Connection`` subclass that counts them; pass it as ``connection_class`` to
``redis.Redis.from_url`` (or ``RedisCheckpointer.from_url``).

``python -m tests.support [URL]`` prints the figures for the checkpointer.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agents_persistence import AgentStateSnapshot, RedisCheckpointer, TodoItem
from redis.connection import Connection

__all__ = [
    "RoundTripCounter",
    "counting_connection_class",
    "measure_checkpointer_round_trips",
]


def _name(arg: Any) -> str:
    return arg.decode() if isinstance(arg, bytes) else str(arg)


@dataclass
class RoundTripCounter:
    """Round trips seen by every connection made with its connection class.

    Attributes:
        round_trips: how many ``send_packed_command`` calls so far.
        log: the command names each round trip carried, in order.
    """

    round_trips: int = 0
    log: list[tuple[str, ...]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, names: tuple[str, ...]) -> None:
        """Count one round trip carrying ``names``."""
        with self._lock:
            self.round_trips += 1
            self.log.append(names)

    def reset(self) -> None:
        """Forget everything counted so far."""
        with self._lock:
            self.round_trips = 0
            self.log.clear()

    @contextmanager
    def measure(self) -> Iterator[list[tuple[str, ...]]]:
        """Collect the round trips made inside the block (the yielded list fills on exit)."""
        start = len(self.log)
        seen: list[tuple[str, ...]] = []
        try:
            yield seen
        finally:
            with self._lock:
                seen.extend(self.log[start:])


def counting_connection_class(counter: RoundTripCounter) -> type[Connection]:
    """A ``redis.Connection`` subclass that reports every round trip to ``counter``."""

    class CountingConnection(Connection):
        _pending: tuple[str, ...] = ()

        def send_command(self, *args: Any, **kwargs: Any) -> None:
            self._pending = (_name(args[0]),) if args else ()
            super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

        def pack_command(self, *args: Any) -> Any:
            self._pending = (_name(args[0]),) if args else ()
            return super().pack_command(*args)  # type: ignore[no-untyped-call]

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            self._pending = tuple(_name(c[0]) for c in commands if c)
            return super().pack_commands(commands)  # type: ignore[no-untyped-call]

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            names, self._pending = self._pending, ()
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]
            counter.record(names)

    return CountingConnection


def measure_checkpointer_round_trips(url: str, namespace: str) -> dict[str, int]:
    """Round trips of each ``RedisCheckpointer`` call on a warm connection.

    Writes only under ``namespace`` (the caller removes it). Returns figures for
    ``save`` (a small snapshot), ``save_large`` (~200 KB of incompressible text),
    ``load``, ``load_large``, ``load_missing``, ``delete``, ``list`` (a few threads) and
    ``save_many_100``.
    """
    counter = RoundTripCounter()
    store = RedisCheckpointer.from_url(
        url, namespace=namespace, connection_class=counting_connection_class(counter)
    )
    state = AgentStateSnapshot(todos=[TodoItem.pending("count")], files={"f": "x" * 100})
    large = AgentStateSnapshot(files={"big": secrets.token_hex(100_000)})
    try:
        # Warm up: connect (HELLO/CLIENT SETINFO) and make sure every script is loaded.
        store.client.ping()
        store.save_state("warm", state)
        store.load_state("warm")
        store.delete_thread("warm")
        store.list_threads()
        figures: dict[str, int] = {}

        def count(what: str, fn: Any, *args: Any) -> None:
            with counter.measure() as trips:
                fn(*args)
            figures[what] = len(trips)

        count("save", store.save_state, "t1", state)
        count("save_large", store.save_state, "big", large)
        count("load", store.load_state, "t1")
        count("load_large", store.load_state, "big")
        count("load_missing", store.load_state, "nothing-here")
        count("list", store.list_threads)
        count("delete", store.delete_thread, "t1")
        batch = [store.prepare(f"b{i}", state) for i in range(100)]
        count("save_many_100", store.save_many, batch)
        return figures
    finally:
        store.close()
