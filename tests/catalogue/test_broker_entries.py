"""Catalogue: what anyone who can reach the broker can put in front of a worker.

Raw entries on the queue list that are not kombu envelopes, Celery messages whose headers
have types Celery does not expect, compressed bodies, Celery's built-in tasks, and time
headers a worker cannot honour. Each is dead-lettered with a bounded record; the worker (the
package's one real worker, ``served``) keeps its process and keeps serving.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import zstandard
from agents_persistence.tasks import SAVE_TASK
from agents_persistence.tasks.cli.main import main
from agents_persistence.tasks.worker.dead_letters import EXCERPT_BYTES, make_entry
from click.testing import CliRunner

from tests.catalogue.cases import zstd_bomb
from tests.catalogue.conftest import Served
from tests.support import sample_state
from tests.support.celery_worker import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _raw(served: Served) -> redis.Redis:
    return redis.Redis.from_url(served.settings.redis_url.get_secret_value())


def _envelope(body: bytes, headers: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "q"},
            "delivery_mode": 2,
            "delivery_tag": uuid.uuid4().hex,
            **props,
        },
    }


def _good_body(served: Served) -> bytes:
    return json.dumps([[], served.good_message("entries"), {}]).encode()


#: Queue entries that are not kombu envelopes of the expected shape.
RAW_ENTRIES: dict[str, bytes] = {
    "garbage": b"garbage",
    "non-utf8": b"\xff\xfe\x00\x80garbage",
    "json-list": b"[1, 2]",
    "json-number": b"5",
    "no-body-no-properties": b'{"hello": "world"}',
    "properties-string": json.dumps({"body": "", "properties": "x"}).encode(),
    "body-not-base64": json.dumps({**_envelope(b"x", {}), "body": "%%%not base64%%%"}).encode(),
    "headers-number": json.dumps({**_envelope(b"[]", {}), "headers": 5}).encode(),
    "kombu-type-marker": b'{"__type__": "bytes", "__value__": 5}',
    "huge": b"{" + b"x" * (4 * 1024 * 1024),
}


@pytest.mark.parametrize("raw", list(RAW_ENTRIES.values()), ids=list(RAW_ENTRIES))
def test_raw_queue_entry(served: Served, raw: bytes) -> None:
    """An entry pushed onto the queue list by hand is set aside by the transport and ends as
    a bounded dead letter (`UnparsableEntry`); the worker process stays the same."""
    pid = served.worker.pid
    before = len(served.letters())
    _raw(served).lpush(served.settings.queue, raw)
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "UnparsableEntry", entry
    assert entry["original_bytes"] == len(raw)
    assert len(json.dumps(entry)) <= EXCERPT_BYTES
    served.still_serving()
    assert served.worker.pid == pid


#: Well-formed envelopes whose Celery headers or properties have unexpected types.
BAD_HEADER_TYPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "shadow-list": ({"shadow": ["x"]}, {}),
    "root-id-dict": ({"root_id": {"a": 1}}, {}),
    "parent-id-number": ({"parent_id": 5}, {}),
    "group-list": ({"group": [1]}, {}),
    "argsrepr-number": ({"argsrepr": 5}, {}),
    "kwargsrepr-huge": ({"kwargsrepr": "x" * 100_000}, {}),
    "origin-list": ({"origin": []}, {}),
    "ignore-result-string": ({"ignore_result": "yes"}, {}),
    "stamps-list": ({"stamps": [1]}, {}),
    "stamped-headers-numbers": ({"stamped_headers": [1, 2]}, {}),
    "timelimit-infinite": ({"timelimit": [1e400, None]}, {}),
    "retries-bool": ({"retries": True}, {}),
    "eta-number": ({"eta": 5}, {}),
    "correlation-id-list": ({}, {"correlation_id": [1]}),
    "reply-to-number": ({}, {"reply_to": 7}),
    "priority-string": ({}, {"priority": "high"}),
}


@pytest.mark.parametrize(
    ("headers", "props"), list(BAD_HEADER_TYPES.values()), ids=list(BAD_HEADER_TYPES)
)
def test_header_types(served: Served, headers: dict[str, Any], props: dict[str, Any]) -> None:
    """A Celery message with a header or property of an unexpected type is dead-lettered
    (`BadMessage`) before Celery reads it."""
    pid = served.worker.pid
    task_id = uuid.uuid4().hex
    envelope = _envelope(
        _good_body(served), {"task": SAVE_TASK, "id": task_id, "lang": "py", **headers}, **props
    )
    _raw(served).lpush(served.settings.queue, json.dumps(envelope))
    entry = served.dead_letter_for(task_id)
    assert entry["error"] == "BadMessage", entry
    served.still_serving()
    assert served.worker.pid == pid


def test_compressed_body(served: Served) -> None:
    """A compressed body (a zlib bomb: 100 MB of zeros in ~100 KB) is never decompressed: dead
    letter with an excerpt of the compressed bytes."""
    bomb = zlib.compress(b"\0" * (100 * 1024 * 1024), 9)
    task_id = uuid.uuid4().hex
    envelope = _envelope(bomb, {"task": SAVE_TASK, "id": task_id, "compression": "zlib"})
    before = len(served.letters())
    _raw(served).lpush(served.settings.queue, json.dumps(envelope))
    (entry,) = served.new_letters_after(before)
    assert "compressed" in entry["reason"], entry
    assert len(json.dumps(entry)) <= EXCERPT_BYTES
    served.still_serving()


@pytest.mark.parametrize("states_size", [True, False], ids=["size-stated", "size-unstated"])
def test_zstd_bomb_body(served: Served, states_size: bool) -> None:
    """A zstd body of a few KB that inflates to 200 MB (stating that size or none) is not
    inflated: dead letter with an excerpt of the compressed bytes; the worker keeps its
    process and keeps serving."""
    pid = served.worker.pid
    bomb = zstd_bomb(200 * 1024 * 1024, states_size=states_size)
    task_id = uuid.uuid4().hex
    envelope = _envelope(
        bomb, {"task": SAVE_TASK, "id": task_id, "compression": "application/zstd"}
    )
    before = len(served.letters())
    _raw(served).lpush(served.settings.queue, json.dumps(envelope))
    (entry,) = served.new_letters_after(before)
    assert "zstd body" in entry["reason"], entry
    assert len(json.dumps(entry)) <= EXCERPT_BYTES
    served.still_serving()
    assert served.worker.pid == pid


def test_zstd_body_of_a_save_is_stored(served: Served) -> None:
    """A message compressed as the layer's producers compress it is served like a plain one
    (and a plain one still is: every other test here sends plain bodies)."""
    task_id = uuid.uuid4().hex
    message = served.good_message("zstd-msg", version=3)
    body = json.dumps([[], message, {}]).encode()
    envelope = _envelope(
        zstandard.ZstdCompressor(level=1).compress(body),
        {"task": SAVE_TASK, "id": task_id, "compression": "application/zstd"},
    )
    _raw(served).lpush(served.settings.queue, json.dumps(envelope))
    deadline = time.monotonic() + 20
    while served.store.stored_versions(["zstd-msg"]).get("zstd-msg") != 3:
        assert time.monotonic() < deadline, "the compressed save was not stored"
        time.sleep(0.05)
    assert served.store.load_state("zstd-msg") == sample_state("zstd-msg")


@pytest.mark.parametrize(
    ("task", "args"),
    [
        ("celery.group", ([], 0, [])),
        ("celery.accumulate", (1, 2)),
        ("celery.chunks", ({}, [], 1)),
        ("celery.backend_cleanup", ()),
        ("celery.chord_unlock", ("x", {})),
    ],
    ids=["group", "accumulate", "chunks", "backend-cleanup", "chord-unlock"],
)
def test_builtin_tasks_not_served(served: Served, task: str, args: tuple[Any, ...]) -> None:
    """Celery's built-in tasks are not registered on the worker: dead letter 'unknown
    task', nothing run."""
    task_id = served.send(task, args=list(args))
    entry = served.dead_letter_for(task_id)
    assert "unknown task" in entry["reason"], entry
    served.still_serving()


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


#: Time headers a worker cannot honour.
BAD_TIMES: dict[str, tuple[dict[str, Any], str]] = {
    "eta-beyond-visibility": ({"eta": _iso(timedelta(days=30))}, "BadMessage"),
    "eta-overflowing": ({"eta": "9999-12-31T23:59:59-23:59"}, "BadMessage"),
    "eta-garbage": ({"eta": "2026-13-45T99:99:99"}, "BadMessage"),
    "expires-in-the-past": ({"expires": _iso(timedelta(hours=-1))}, "Expired"),
}


@pytest.mark.parametrize(("headers", "error"), list(BAD_TIMES.values()), ids=list(BAD_TIMES))
def test_time_headers(served: Served, headers: dict[str, Any], error: str) -> None:
    """An eta the visibility timeout cannot cover, an eta that does not convert, or an
    expiry already past: dead-lettered at once, never redelivered or dropped silently."""
    task_id = uuid.uuid4().hex
    envelope = _envelope(_good_body(served), {"task": SAVE_TASK, "id": task_id, **headers})
    _raw(served).lpush(served.settings.queue, json.dumps(envelope))
    entry = served.dead_letter_for(task_id)
    assert entry["error"] == error, entry
    served.still_serving()


def test_short_countdown_still_runs(served: Served) -> None:
    """A countdown within the bound (our retries use at most the backoff maximum) runs."""
    message = served.good_message("countdown", 3)
    served.app.send_task(SAVE_TASK, kwargs=message, queue=served.settings.queue, countdown=1)
    served.still_serving()
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while served.store.stored_versions(["countdown"])["countdown"] != 3:
        assert datetime.now(UTC) < deadline, served.worker.log_tail()
        time.sleep(0.05)


@pytest.mark.parametrize("task", ["celery.group", "celery.accumulate", "os.system"])
def test_replay_refuses_other_task_names(served: Served, task: str) -> None:
    """`dead-letters replay` publishes only the layer's own task names: an entry naming
    another task is refused with a message and kept; nothing is published."""
    entry = make_entry("store down", "StoreUnavailable", task=task, args=[], kwargs={})
    served.app.dead_letters.push(entry)
    env = settings_env(
        redis_url=served.settings.redis_url.get_secret_value(),
        namespace=served.settings.namespace,
        queue=f"replay-{uuid.uuid4().hex[:8]}",
    )
    result = CliRunner().invoke(main, ["dead-letters", "replay", entry["id"]], env=env)
    assert result.exit_code == 1, result.output
    assert "cannot be replayed" in result.output
    assert _raw(served).llen(env["AGENTS_PERSISTENCE_QUEUE"]) == 0
    assert served.app.dead_letters.find(entry["id"]) is not None
