"""What tools get from every store, so none reaches into an implementation: the namespace,
the dead-letter list, key counts, server info, ping, purging threads, dropping a namespace."""

from __future__ import annotations

import pytest
from agents_persistence import BaseCheckpointer, InMemoryCheckpointer, RedisCheckpointer

from tests.conformance.conftest import Backend
from tests.support import sample_state


def test_the_namespace_is_the_stores(backend: Backend) -> None:
    store = backend.make()
    assert store.namespace == backend.namespace
    with pytest.raises(ValueError, match="namespace"):
        backend.make(namespace="a:b")


def test_the_default_namespace() -> None:
    assert InMemoryCheckpointer().namespace == "agents"


def test_dead_letter_list_is_bounded_newest_first_and_shared(store: BaseCheckpointer) -> None:
    entries = store.dead_letter_list(3)
    assert (entries.max_length, entries.count(), entries.newest(10)) == (3, 0, [])
    for i in range(5):
        entries.push(b"e%d" % i)
    again = store.dead_letter_list(3)
    assert again.newest(10) == [b"e4", b"e3", b"e2"]
    assert again.newest(2) == [b"e4", b"e3"]
    assert entries.remove(b"e3")
    assert not entries.remove(b"e3")
    assert again.count() == 2
    assert again.clear() == 2
    assert entries.newest(10) == []
    with pytest.raises(ValueError, match="max_length"):
        store.dead_letter_list(0)


def _index_keys(store: BaseCheckpointer, live: list[str]) -> int:
    """Keys the index of ``live`` threads takes: Redis keeps a shard key per shard holding
    one (and the namespace's layout key); memory counts its index as one."""
    if isinstance(store, RedisCheckpointer):
        return len({store.keys.shard(tid) for tid in live}) + 1
    return 1


def test_key_count_purge_and_drop(backend: Backend) -> None:
    store = backend.make()
    other = backend.make(namespace=backend.new_namespace())
    for tid in ("a", "b", "c"):
        store.save_state(tid, sample_state(tid))
    other.save_state("a", sample_state("other"))
    store.delete_thread("c")  # a tombstone is a key too
    store.dead_letter_list(10).push(b"x")
    # a, b, c (tombstone), the index, the dead-letter list
    assert store.key_count() == 3 + _index_keys(store, ["a", "b"]) + 1
    assert store.purge_threads(["a", "c", "missing"]) == 2
    assert store.list_threads() == ["b"]
    assert store.load_state("a") is None
    assert store.key_count() == 1 + _index_keys(store, ["b"]) + 1
    assert store.drop_namespace() == 1 + _index_keys(store, ["b"]) + 1
    assert store.key_count() == 0
    assert store.list_threads() == []
    assert store.dead_letter_list(10).count() == 0
    # Nothing outside the namespace was touched.
    assert other.load_state("a") == sample_state("other")
    assert other.key_count() == 1 + _index_keys(other, ["a"])


def test_ping_and_server_info(backend: Backend) -> None:
    store = backend.make()
    store.ping()
    info = store.server_info()
    if backend.name == "redis":
        assert str(info["redis_version"]).count(".") == 2
        assert "used_memory_human" in info
    else:  # memory has no server; fakeredis answers no INFO
        assert isinstance(info, dict)
