"""InMemoryCheckpointer on an injected clock: expiry without sleeping."""

from __future__ import annotations

import pytest
from agents_persistence import InMemoryCheckpointer

from tests.support import sample_state

pytestmark = pytest.mark.unit


class FakeTime:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ttl_follows_the_injected_clock() -> None:
    clock = FakeTime()
    store = InMemoryCheckpointer(ttl=60, time_source=clock)
    store.save_state("t", sample_state())
    clock.now += 59.999
    assert store.list_threads() == ["t"]
    clock.now += 0.001  # expiry is exclusive: at the deadline the state is gone
    assert store.load_state("t") is None
    assert store.list_threads() == []
    assert store.count_threads() == (0, 1)
    assert store.cleanup_expired() == 1
    assert store.cleanup_expired() == 0


def test_tombstones_follow_the_injected_clock() -> None:
    clock = FakeTime()
    store = InMemoryCheckpointer(tombstone_ttl=10, time_source=clock)
    store.delete_thread("t", version=50)
    clock.now += 9
    assert store.save_state("t", sample_state(), version=10).stale
    clock.now += 1
    assert store.save_state("t", sample_state(), version=10).written


def test_cleanup_limit_takes_the_oldest_first() -> None:
    clock = FakeTime()
    store = InMemoryCheckpointer(ttl=1, time_source=clock)
    for i in range(5):
        store.save_state(f"t{i}", sample_state())
        clock.now += 0.1
    clock.now += 10
    assert store.cleanup_expired(limit=2) == 2
    assert store.count_threads() == (0, 3)
    assert store.cleanup_expired() == 3
