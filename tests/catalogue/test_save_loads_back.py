"""Catalogue, class 3: whatever a save accepts loads back, on every store.

Properties (hypothesis), on the in-memory store, fakeredis and a real Redis:

* a snapshot generated near every limit (nesting depth, integer size, float range, text
  that escapes or is refused, counts, total size around the cap) either fails at the
  agent with a typed :class:`InvalidInput`, or goes through the worker's message check and
  loads back equal;
* a snapshot body as a worker may receive it (any JSON text, NaN literals, integers past
  64 bits, nesting past the parser's limit) is either refused by the worker with a typed
  error, or written and loaded back equal;
* whatever bytes sit under a thread key (random, header-like, damaged records), a load
  returns a state, nothing, or raises :class:`CorruptState`: never anything else.

Plus the instances the second adversarial pass found, refused at every entry point.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from agents_persistence import (
    BaseCheckpointer,
    Codec,
    CorruptState,
    InMemoryCheckpointer,
    InvalidInput,
    InvalidSnapshot,
    InvalidVersion,
    PreparedSave,
    RedisCheckpointer,
)
from agents_persistence.tasks.protocol.messages import BadMessage, parse_save, save_message
from agents_persistence.validation import MAX_JSON_DEPTH, MAX_VERSION, coerce_snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.catalogue.cases import deep, deep_list
from tests.support import sample_state
from tests.support.strategies import near_limit_states, stored_bytes

#: A small cap, so "around the cap" stays cheap to generate and store.
MAX_BYTES = 8192
_PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def _codec() -> Codec:
    return Codec(max_snapshot_bytes=MAX_BYTES, compress_threshold=256)


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("fakeredis", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def store(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[BaseCheckpointer]:
    """A store of each kind with the small cap (real Redis: the machine's, own namespace)."""
    ns = namespace_factory()
    if request.param == "memory":
        yield InMemoryCheckpointer(namespace=ns, codec=_codec())
        return
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("real_redis_url"))
    made = RedisCheckpointer(client, namespace=ns, codec=_codec())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(
    params=[
        pytest.param("fakeredis", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def redis_store(
    request: pytest.FixtureRequest, namespace_factory: Callable[[], str]
) -> Iterator[RedisCheckpointer]:
    """A Redis store of each kind (bytes can be planted under its keys)."""
    ns = namespace_factory()
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("real_redis_url"))
    made = RedisCheckpointer(client, namespace=ns, codec=_codec())
    try:
        yield made
    finally:
        made.close()


def _tid() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


@_PROPERTY
@given(state=near_limit_states(MAX_BYTES))
def test_whatever_a_save_accepts_loads_back(
    store: BaseCheckpointer, state: dict[str, Any]
) -> None:
    """Agent side refuses with a typed error, or the worker accepts the very message the
    agent would send and the thread loads back equal."""
    tid = _tid()
    try:
        model = coerce_snapshot(state)  # what prepare does first (defaults filled once)
        save = store.prepare(tid, model)
    except InvalidInput:
        return
    message = save_message(store.namespace, save)
    parsed = parse_save((), message, namespace=store.namespace, codec=store.codec)
    assert store.save_prepared(parsed).written
    assert store.load_state(tid) == model


def _body(state: dict[str, Any], ascii_only: bool) -> bytes:
    """``state`` as another producer may write it: NaN literals, integers of any size."""
    digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # this producer writes integers of any length
    try:
        text = json.dumps(state, ensure_ascii=ascii_only, default=str, allow_nan=True)
    finally:
        sys.set_int_max_str_digits(digits)
    return text.encode("utf-8", "surrogatepass")


@_PROPERTY
@given(state=near_limit_states(MAX_BYTES), ascii_only=st.booleans())
def test_whatever_a_worker_accepts_loads_back(
    store: BaseCheckpointer, state: dict[str, Any], ascii_only: bool
) -> None:
    """A body as any producer may write it: the worker's check refuses it with a typed
    error, or the store writes those very bytes and they load back as what was checked."""
    for interrupt in state.get("pending_interrupts", []):  # no default filled at load
        interrupt.setdefault("created_at", "2026-01-02T03:04:05Z")
    body = _body(state, ascii_only)
    try:
        checked = store.codec.load_json(body)
    except InvalidInput:
        return
    tid = _tid()
    assert store.save_prepared(PreparedSave(tid, 1, body, int(time.time() * 1000))).written
    assert store.load_state(tid) == checked


def _valid_records() -> list[bytes]:
    codec = _codec()
    small = codec.dump_json(sample_state("s"))
    large = codec.dump_json(sample_state("l", size=1500))
    return [codec.pack(small, 7, 1_700_000_000_000), codec.pack(large, 9, 1_700_000_000_000)]


@_PROPERTY
@given(raw=stored_bytes(_valid_records()))
def test_a_load_of_stored_bytes_raises_only_corrupt_state(
    redis_store: RedisCheckpointer, raw: bytes
) -> None:
    """Whatever sits under a thread key: a state, nothing, or CorruptState; versions read
    back as an int; the next save replaces whatever is not a newer record of ours."""
    tid = _tid()
    key = redis_store.keys.thread(tid)
    redis_store.client.set(key, raw)
    error: CorruptState | None = None
    try:
        redis_store.load_checkpoint(tid)
    except CorruptState as exc:
        error = exc
    assert error is None or error.thread_id == tid
    held = redis_store.stored_versions([tid])[tid]
    assert 0 <= held <= MAX_VERSION
    redis_store.client.delete(key)


#: Inputs the second pass found written and then unreadable; each refused before a write.
_DEPTH_OVER = MAX_JSON_DEPTH - 1  # scratchpad value containers: document depth 129
REFUSED_AT_SAVE: dict[str, tuple[dict[str, Any], type[InvalidInput]]] = {
    "depth-129": ({"scratchpad": {"d": deep(_DEPTH_OVER - 1)}}, InvalidSnapshot),
    "depth-200": ({"scratchpad": {"d": deep_list(200)}}, InvalidSnapshot),
    "depth-in-tool-args": (
        {"pending_interrupts": [{"tool_name": "t", "tool_args": deep(_DEPTH_OVER - 2)}]},
        InvalidSnapshot,
    ),
    "int-65-bits": ({"scratchpad": {"n": 2**64}}, InvalidSnapshot),
    "int-below-int64": ({"scratchpad": {"n": -(2**63) - 1}}, InvalidSnapshot),
    "int-4301-digits": ({"scratchpad": {"n": 10**4300}}, InvalidSnapshot),
    "int-5001-digits": ({"scratchpad": {"n": [10**5000]}}, InvalidSnapshot),
}


@pytest.mark.parametrize(
    ("state", "error"), list(REFUSED_AT_SAVE.values()), ids=list(REFUSED_AT_SAVE)
)
def test_refused_at_every_entry_point(
    store: BaseCheckpointer, state: dict[str, Any], error: type[InvalidInput]
) -> None:
    """The agent (prepare), the worker (the same JSON as a message) and the store (a
    prepared save built by hand) each refuse it with the typed error; nothing is written."""
    with pytest.raises(error):
        store.save_state("t", state)  # type: ignore[arg-type]
    body = _body(state, ascii_only=True)
    message = {"namespace": store.namespace, "thread_id": "t", "version": 5,
               "state": body.decode(), "saved_at_ms": 1}  # fmt: skip
    with pytest.raises(error):
        parse_save((), message, namespace=store.namespace, codec=store.codec)
    assert store.load_state("t") is None


REFUSED_HEADERS: dict[str, tuple[dict[str, int], type[InvalidInput]]] = {
    "version-2**63": ({"version": 2**63}, InvalidVersion),
    "version-zero": ({"version": 0}, InvalidVersion),
    "saved-at-1e17": ({"saved_at_ms": 10**17}, InvalidSnapshot),
    "saved-at-negative": ({"saved_at_ms": -1}, InvalidSnapshot),
}


@pytest.mark.parametrize(
    ("fields", "error"), list(REFUSED_HEADERS.values()), ids=list(REFUSED_HEADERS)
)
def test_record_header_fields_bounded(
    store: BaseCheckpointer, fields: dict[str, int], error: type[InvalidInput]
) -> None:
    """A version or save time a record header cannot hold: the message check refuses it
    (BadMessage or InvalidVersion), and the store refuses it in a prepared save (that save
    alone, its batch neighbour is written)."""
    good = store.prepare("good", sample_state("good"), version=3)
    message = {**save_message(store.namespace, good), **fields}
    with pytest.raises((BadMessage, error)):
        parse_save((), message, namespace=store.namespace, codec=store.codec)
    bad = PreparedSave("bad", fields.get("version", 3), good.body, fields.get("saved_at_ms", 1))
    refused, written = store.save_many([bad, good])
    assert isinstance(refused, error)
    assert not isinstance(written, Exception)
    assert written.written
    assert store.load_state("bad") is None
    assert store.load_state("good") == sample_state("good")


def test_stored_version_above_int64_is_replaced(redis_store: RedisCheckpointer) -> None:
    """A record whose header says a version above 2**63-1 (never written by us): loads are
    CorruptState, version reads say 0, and the next save replaces it instead of every
    later save being stale forever."""
    tid = _tid()
    record = b"AP1j" + b"9" * 20 + b"%016d" % 1_700_000_000_000 + b"{}"
    redis_store.client.set(redis_store.keys.thread(tid), record)
    with pytest.raises(CorruptState):
        redis_store.load_state(tid)
    assert redis_store.stored_versions([tid]) == {tid: 0}
    assert redis_store.save_state(tid, sample_state(tid), version=2).written
    assert redis_store.load_state(tid) == sample_state(tid)
