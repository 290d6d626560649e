"""No request of the store ever spans two Redis Cluster slots where the cluster would refuse
it (CROSSSLOT): every script's keys and every MULTI/EXEC share one slot.

Two checks: the Lua scripts touch only keys passed in ``KEYS`` (never a name built inside
the script), and every request the store sends in cluster mode (fakeredis answers) has all
the keys of each script, and of each transaction, in one slot.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import fakeredis
import pytest
from agents_persistence import AgentStateSnapshot, RedisCheckpointer
from agents_persistence.redis_ops import Command, Pipeline, Request
from redis.crc import key_slot

pytestmark = pytest.mark.unit

_CALL = re.compile(r"redis\.call\(\s*'([A-Z]+)'\s*(?:,\s*([^,)]+))?")
#: Commands the scripts may run without a key.
_KEYLESS = {"TIME"}


@pytest.mark.parametrize("name", ["save", "delete", "page", "cleanup"])
def test_the_scripts_touch_only_the_keys_they_are_given(name: str) -> None:
    source = resources.files("agents_persistence").joinpath("lua", f"{name}.lua").read_text()
    calls = _CALL.findall(source)
    assert calls, "no redis.call found: the pattern no longer matches the scripts"
    for command, first in calls:
        if command in _KEYLESS:
            continue
        # the key is KEYS[n] or a local bound to one (page.lua: idx = KEYS[1])
        assert re.fullmatch(r"KEYS\[\d\]|idx", first.strip()), (command, first)
    assert "idx" not in source or re.search(r"local idx = KEYS\[1\]", source)


def _keys_of(args: tuple[Any, ...]) -> list[bytes]:
    name = str(args[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return [_b(k) for k in args[3 : 3 + int(args[2])]]
    if name in ("TIME", "SCRIPT LOAD", "PING"):
        return []
    return [_b(args[1])]


def _b(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class _Node:
    def __init__(self, name: str) -> None:
        self.name = name


class _ThreeNodeFake(fakeredis.FakeRedis):
    """fakeredis answering as a cluster client's routing would: three nodes by slot
    range, each reached through the same fake server (so the store's per-node
    pipelines run)."""

    nodes_manager = None

    def get_node_from_key(self, key: bytes | str) -> _Node:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return _Node(f"node-{slot * 3 // 16384}")

    def get_redis_connection(self, node: _Node) -> fakeredis.FakeRedis:
        return self


class _SlotCheckingStore(RedisCheckpointer):
    """A store in cluster mode over fakeredis that checks every request's slots first."""

    requests: list[Request]

    def _send(self, request: Request) -> Any:
        self.requests.append(request)
        commands = request.commands if isinstance(request, Pipeline) else (request.args,)
        for args in commands:  # one command: its keys in one slot
            assert len({key_slot(k) for k in _keys_of(args)}) <= 1, args
        if isinstance(request, Pipeline) and request.transaction:  # MULTI/EXEC: one slot
            slots = {key_slot(k) for args in commands for k in _keys_of(args)}
            assert len(slots) <= 1, commands
        return super()._send(request)


def test_no_request_spans_two_slots_in_cluster_mode() -> None:
    store = _SlotCheckingStore(_ThreeNodeFake(), namespace="ns", ttl=60)
    store.requests = []
    store._ops.cluster = True  # as with a RedisCluster client
    small = AgentStateSnapshot(scratchpad={"n": 1})
    large = AgentStateSnapshot(files={"big": "".join(f"{i:x}" for i in range(20_000))})
    ids = [f"t{i}" for i in range(60)]
    store.save_many([store.prepare(t, large if i % 7 == 0 else small) for i, t in enumerate(ids)])
    store.save_state("one-large", large)
    store.save_state("one-small", small)
    assert store.load_state("one-large") == large
    assert store.load_state("one-large") == large  # the split read of a large record
    assert store.load_state("t1") == small
    store.delete_thread("t2")
    assert len(list(store.iter_threads(page_size=7))) == 61
    assert store.stored_versions(ids[:10])["t3"] > 0
    assert store.count_threads() == (61, 0)
    assert store.cleanup_expired(limit=5) == 0
    assert store.purge_threads(ids[:20]) == 20
    transactions = [r for r in store.requests if isinstance(r, Pipeline) and r.transaction]
    assert len(transactions) >= 2  # the staged large saves were checked
    assert any(isinstance(r, Command) for r in store.requests)
