"""The exception tree and the version clock."""

from __future__ import annotations

import threading

import pytest
from agents_persistence import (
    CorruptState,
    FlushTimeout,
    HandOffError,
    InvalidInput,
    InvalidSnapshot,
    InvalidThreadId,
    InvalidVersion,
    PersistenceError,
    SnapshotTooLarge,
    StoreUnavailable,
    VersionClock,
    next_version,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "parents"),
    [
        (InvalidInput, (PersistenceError, ValueError)),
        (InvalidThreadId, (InvalidInput,)),
        (InvalidVersion, (InvalidInput,)),
        (InvalidSnapshot, (InvalidInput,)),
        (SnapshotTooLarge, (InvalidSnapshot,)),
        (CorruptState, (PersistenceError,)),
        (StoreUnavailable, (PersistenceError,)),
        (HandOffError, (PersistenceError,)),
        (FlushTimeout, (HandOffError, TimeoutError)),
    ],
)
def test_one_tree_under_persistence_error(
    error: type[Exception], parents: tuple[type[Exception], ...]
) -> None:
    assert issubclass(error, parents)
    assert issubclass(error, PersistenceError)


def test_error_details() -> None:
    corrupt = CorruptState("t:1", "bad header")
    assert (corrupt.thread_id, corrupt.reason) == ("t:1", "bad header")
    assert "'t:1'" in str(corrupt)
    big = SnapshotTooLarge(2000, 1024)
    assert (big.size, big.limit) == (2000, 1024)
    pending = [(f"t{i}", i) for i in range(12)]
    timeout = FlushTimeout(pending, 1.5)
    assert timeout.pending == pending
    assert "12 hand-off(s)" in str(timeout)
    assert "and 2 more" in str(timeout)


def test_versions_strictly_increase() -> None:
    clock = VersionClock()
    versions = [clock.next() for _ in range(1000)]
    assert versions == sorted(set(versions))
    assert next_version() < next_version()


def test_versions_stay_above_what_was_observed() -> None:
    clock = VersionClock()
    far_future = clock.next() + 10**15
    clock.observe(far_future)
    assert clock.next() == far_future + 1


def test_versions_are_unique_across_threads() -> None:
    clock = VersionClock()
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [clock.next() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2000
