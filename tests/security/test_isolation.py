"""Namespace isolation and JSON only.

No thread id, however crafted, makes a checkpointer read or write a key outside its
namespace; producers publish JSON only and the app accepts nothing else. (A worker fed a
pickled message, with a payload that would create a file, is in the catalogue:
tests/catalogue/test_messages.py::test_pickle_never_executes.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import fakeredis
import pytest
import redis
import zstandard
from agents_persistence import InvalidThreadId, RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.keys import Keys
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.validation import MAX_THREAD_ID_LENGTH, check_thread_id
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import RedisServer, sample_state

#: Thread ids built to reach other keys: other namespaces' records, their index and dead
#: letters, the broker's keys, glob and hash-tag characters, path tricks.
CRAFTED = [
    "other:thread:victim",
    ":victim",
    "../other:thread:victim",
    "..:..:other:index",
    "*",
    "victim*",
    "[a-z]*",
    "{other}:thread:victim",
    "other:deadletter",
    "unacked",
    "_kombu.binding.q",
    "_agents_persistence/inflight",
    "\\x00victim",
    "victim\u00e9",  # non-ASCII but visible (invisible ones are refused: below)
    "ns-2:thread:victim",
    "a" * MAX_THREAD_ID_LENGTH,
]


def _keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


@pytest.mark.timeout(60)
def test_crafted_thread_ids_stay_in_their_namespace(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Two namespaces on one server, one a prefix of the other's name: everything the first
    does with crafted ids (save, load, delete, list) touches only its own keys, and the
    other's data is unchanged and unseen."""
    server = redis_server_factory()
    raw = server.client()
    mine = RedisCheckpointer.from_url(server.url, namespace="ns")
    other = RedisCheckpointer.from_url(server.url, namespace="ns-2")
    victim_state = sample_state("victim")
    other.save_state("victim", victim_state)
    raw.set("unacked", b"broker-owned")
    before = {k: raw.dump(k) for k in _keys(raw)}

    for tid in CRAFTED:
        assert mine.load_state(tid) is None
        mine.save_state(tid, sample_state(tid))
        assert mine.load_state(tid) == sample_state(tid)
    for tid in CRAFTED[::2]:
        mine.delete_thread(tid)

    for tid in ("victim\u200b", "\u202evictim", "\ufeffvictim"):  # invisible or bidi
        with pytest.raises(InvalidThreadId):
            mine.save_state(tid, sample_state(tid))

    new = _keys(raw) - set(before)
    assert new, "nothing was written"
    assert all(key.startswith(b"ns:") for key in new), sorted(new)
    assert {k: raw.dump(k) for k in before} == before  # nothing outside "ns:" changed
    assert set(mine.list_threads()) == set(CRAFTED[1::2])
    assert other.list_threads() == ["victim"]
    assert other.load_state("victim") == victim_state


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=MAX_THREAD_ID_LENGTH))
def test_every_valid_thread_id_maps_inside_the_namespace(thread_id: str) -> None:
    """Any string the checks accept becomes a key under ``<namespace>:{<its shard's tag>}
    :thread:`` (or ``<namespace>:thread:`` in the single-index layout), ending in the id, so
    no two ids share a key; any other string is refused with InvalidThreadId."""
    try:
        check_thread_id(thread_id)
    except InvalidThreadId:
        return
    sharded = Keys("ns")
    tag = sharded.tag(sharded.shard(thread_id))
    assert sharded.thread(thread_id) == f"ns:{tag}:thread:{thread_id}"
    assert Keys("ns", 0).thread(thread_id) == f"ns:thread:{thread_id}"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=64))
def test_fakeredis_round_trip_writes_only_namespace_keys(thread_id: str) -> None:
    """The same property through a real save/load/delete on a Lua-capable fakeredis."""
    try:
        check_thread_id(thread_id)
    except InvalidThreadId:
        return
    client = fakeredis.FakeRedis()
    store = RedisCheckpointer(client, namespace="ns")
    store.save_state(thread_id, sample_state("x"))
    assert store.load_state(thread_id) == sample_state("x")
    store.delete_thread(thread_id)
    assert all(k.startswith(b"ns:") for k in client.scan_iter())


def test_app_accepts_json_only() -> None:
    """Both directions of the app are JSON: serializers, accepted content, results."""
    app = create_app(Settings(_env_file=None, broker_url="memory://"))
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["durable", "buffered"])
def test_producer_publishes_json_only(
    redis_server_factory: Callable[..., RedisServer], mode: str
) -> None:
    """Every message a CeleryCheckpointer puts on the broker is application/json, and its
    body is plain JSON (no pickle, no other serializer; zstd-compressed, stating its size),
    in both hand-off modes."""
    server = redis_server_factory()
    settings = Settings(_env_file=None, redis_url=server.url, namespace="ns", queue="q-json")
    store = RedisCheckpointer.from_settings(settings)
    client = CeleryCheckpointer(store, create_app(settings, store=store), mode=mode)  # type: ignore[arg-type]
    for i in range(5):
        client.save_state(f"t-{i}", sample_state(f"t-{i}"))
    client.close()
    raw = server.client()
    messages = [json.loads(m) for m in raw.lrange("q-json", 0, -1)]
    assert messages
    for message in messages:
        assert message["content-type"] == "application/json"
        encoded = message["properties"].get("body_encoding") == "base64"
        body = base64.b64decode(message["body"]) if encoded else message["body"].encode()
        assert message["headers"]["compression"] == "application/zstd"
        assert zstandard.frame_content_size(body) > 0
        args, kwargs, embed = json.loads(zstandard.ZstdDecompressor().decompress(body))
        assert args == []
        assert set(kwargs) == {"namespace", "thread_id", "version", "state", "saved_at_ms"} or (
            set(kwargs) == {"namespace", "entries"}
        )
        assert not any(embed.values())
    store.close()
