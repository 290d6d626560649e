"""Catalogue: what can reach a worker through the broker, and what it does with it.

One real worker (``celery -A agents_persistence.tasks worker``) serves the whole module on a
private
redis-server. Each test publishes its bad message, then a good save behind it: the bad
message must end as a dead letter with a typed error (or, for replays, as a harmless
duplicate or stale write), the good save must become durable (the worker keeps serving),
and the bystander thread must be untouched.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import time
from typing import Any

import pytest
from agents_persistence.tasks import DELETE_TASK, SAVE_BATCH_TASK, SAVE_TASK

from tests.catalogue.cases import BAD_THREAD_IDS
from tests.catalogue.conftest import MAX_SNAPSHOT_BYTES, Served
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _save_kwargs(served: Served, **changes: Any) -> dict[str, Any]:
    message = served.good_message()
    message.update(changes)
    return {k: v for k, v in message.items() if v is not _DROP}


_DROP = object()

#: Save messages that must be dead-lettered: (task kwargs changes, expected error type).
BAD_SAVE_MESSAGES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-key": ({"colour": "red"}, "BadMessage"),
    "missing-key": ({"version": _DROP}, "BadMessage"),
    "version-not-int": ({"version": "7"}, "BadMessage"),
    "version-zero": ({"version": 0}, "InvalidVersion"),
    "version-above-int64": ({"version": 2**63}, "InvalidVersion"),
    "state-not-string": ({"state": {"todos": []}}, "BadMessage"),
    "state-not-json": ({"state": "{not json"}, "InvalidSnapshot"),
    "state-nan": ({"state": '{"scratchpad": {"x": NaN}}'}, "InvalidSnapshot"),
    "state-unknown-status": (
        {"state": '{"todos": [{"content": "x", "status": "done"}]}'},
        "InvalidSnapshot",
    ),
    "state-deep": (
        {"state": '{"scratchpad": {"d": ' + "[" * 5000 + "]" * 5000 + "}}"},
        "InvalidSnapshot",
    ),
    "state-over-cap": (
        {"state": json.dumps({"files": {"big": "x" * (MAX_SNAPSHOT_BYTES + 1)}})},
        "SnapshotTooLarge",
    ),
    "invalid-namespace": ({"namespace": "not:a-namespace"}, "BadMessage"),
}
BAD_SAVE_MESSAGES.update(
    {
        f"thread-{name}": (
            {"thread_id": tid},
            "InvalidThreadId" if isinstance(tid, str) else "BadMessage",
        )
        for name, tid in BAD_THREAD_IDS.items()
        if not isinstance(tid, bytes)  # bytes do not survive JSON
    }
)


@pytest.mark.parametrize(
    ("changes", "error"), list(BAD_SAVE_MESSAGES.values()), ids=list(BAD_SAVE_MESSAGES)
)
def test_bad_save_message(served: Served, changes: dict[str, Any], error: str) -> None:
    """A save message with a bad field is dead-lettered with a typed error."""
    kwargs = _save_kwargs(served, **changes)
    task_id = served.send(SAVE_TASK, kwargs=kwargs)
    entry = served.dead_letter_for(task_id)
    assert entry["error"] == error, entry["reason"]
    assert entry["namespace"] == served.settings.namespace
    served.still_serving()


def test_wrong_arity(served: Served) -> None:
    """Six positional arguments where a save takes at most five: BadMessage."""
    message = served.good_message()
    task_id = served.send(SAVE_TASK, args=[*message.values(), "extra"])
    entry = served.dead_letter_for(task_id)
    assert entry["error"] == "BadMessage"
    assert "at most 5 arguments" in entry["reason"]
    served.still_serving()


def test_argument_given_twice(served: Served) -> None:
    """A field both positional and keyword: BadMessage."""
    message = served.good_message()
    task_id = served.send(SAVE_TASK, args=[message["namespace"]], kwargs=message)
    assert served.dead_letter_for(task_id)["error"] == "BadMessage"
    served.still_serving()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'"just a string"', b""],
    ids=["broken-json", "binary", "wrong-shape", "string", "empty"],
)
def test_garbage_body(served: Served, body: bytes) -> None:
    """A task message whose body is not [args, kwargs, embed] JSON is dead-lettered."""
    task_id = served.publish(body, headers={"task": SAVE_TASK})
    entry = served.dead_letter_for(task_id)
    assert entry["error"], entry
    served.still_serving()


def test_not_a_task_message(served: Served) -> None:
    """A JSON message with no task header at all is dead-lettered (never executed)."""
    before = len(served.letters())
    served.publish(b'{"hello": "world"}', headers=None)
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "UnknownMessage" or entry["error"], entry
    served.still_serving()


def test_protocol_1_message(served: Served) -> None:
    """A JSON task message of Celery's old protocol 1 (fields in the body, no task header)
    is refused: the layer sends protocol 2 only."""
    body = {"task": SAVE_TASK, "id": "p1-json", "args": 5, "kwargs": "not a dict"}
    before = len(served.letters())
    served.publish(json.dumps(body).encode(), headers=None)
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "BadMessage"
    served.still_serving()


def test_unknown_task(served: Served) -> None:
    """A well-formed message for a task this worker does not have is dead-lettered."""
    task_id = served.send("agents_persistence.no_such_task", kwargs=served.good_message())
    entry = served.dead_letter_for(task_id)
    assert "unknown task" in entry["reason"]
    served.still_serving()


class _TouchOnUnpickle:
    """Creates a file as soon as it is unpickled."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.parametrize("with_task_header", [True, False], ids=["protocol-2", "protocol-1"])
def test_pickle_never_executes(
    served: Served, tmp_path: pathlib.Path, with_task_header: bool
) -> None:
    """A pickled body is never unpickled: no file appears, the message is dead-lettered
    with its raw body, and the worker keeps serving."""
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(armed)))
    assert armed.exists(), "the payload is not armed"
    target = tmp_path / "pwned"
    payload = _TouchOnUnpickle(target)
    if with_task_header:
        body = pickle.dumps(((payload,), {}, {}))
        headers: dict[str, Any] | None = {"task": SAVE_TASK}
    else:
        body = pickle.dumps({"task": SAVE_TASK, "id": "p1", "args": (payload,), "kwargs": {}})
        headers = None
    before = len(served.letters())
    served.publish(body, content_type="application/x-python-serialize", headers=headers)
    (entry,) = served.new_letters_after(before)
    served.still_serving()
    assert not target.exists()
    assert entry["content_type"] == "application/x-python-serialize"
    assert entry["body_base64"]


@pytest.mark.parametrize(
    "content_type", ["application/x-yaml", "application/x-msgpack", "text/plain"]
)
def test_other_content_types(served: Served, content_type: str) -> None:
    """Any content type but JSON is refused and dead-lettered."""
    before = len(served.letters())
    served.publish(b"a: 1", content_type=content_type, headers={"task": SAVE_TASK})
    (entry,) = served.new_letters_after(before)
    assert entry["content_type"] == content_type
    served.still_serving()


def test_replayed_message(served: Served) -> None:
    """The same save message delivered three times: written once, then duplicates; an
    older one replayed after a newer one is stale. The thread ends at the newest."""
    newer = served.good_message("replayed", 20)
    older = served.good_message("replayed", 10)
    for _ in range(3):
        served.send(SAVE_TASK, kwargs=newer)
    served.send(SAVE_TASK, kwargs=older)
    served.still_serving()
    deadline = time.monotonic() + 15
    while served.store.stored_versions(["replayed"])["replayed"] != 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    checkpoint = served.store.load_checkpoint("replayed")
    assert checkpoint is not None
    assert checkpoint.version == 20
    assert checkpoint.state == sample_state("replayed")


def test_batch_with_one_bad_entry(served: Served) -> None:
    """A batch whose second entry is invalid: that entry is dead-lettered, the others are
    written."""
    ns = served.settings.namespace
    entries = [
        {k: v for k, v in served.good_message(f"batch-{i}", 5).items() if k != "namespace"}
        for i in range(3)
    ]
    entries[1]["state"] = '{"todos": "nope"}'
    before = len(served.letters())
    served.send(SAVE_BATCH_TASK, kwargs={"namespace": ns, "entries": entries})
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "InvalidSnapshot"
    served.still_serving()
    held = served.store.stored_versions(["batch-0", "batch-1", "batch-2"])
    assert held == {"batch-0": 5, "batch-1": 0, "batch-2": 5}


def test_bad_delete_message(served: Served) -> None:
    """A delete message with a bad thread id is dead-lettered; nothing is deleted."""
    ns = served.settings.namespace
    task_id = served.send(DELETE_TASK, kwargs={"namespace": ns, "thread_id": "", "version": 5})
    assert served.dead_letter_for(task_id)["error"] == "InvalidThreadId"
    served.still_serving()


def _body(served: Served, embed: dict[str, Any] | None = None) -> bytes:
    return json.dumps([[], served.good_message("headers"), embed or {}]).encode()


#: Task messages with a valid body but headers or workflow fields no producer of ours sends.
BAD_HEADERS: dict[str, dict[str, Any]] = {
    "eta-not-a-date": {"eta": "tomorrow-ish"},
    "expires-not-a-date": {"expires": "never"},
    "timelimit-not-numbers": {"timelimit": ["soon", "later"]},
    "timelimit-not-a-pair": {"timelimit": 5},
    "retries-not-int": {"retries": "many"},
    "id-not-string": {"id": 12345},
    "task-not-string": {"task": ["agents_persistence.save_state"]},
}


@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_bad_headers(served: Served, headers: dict[str, Any]) -> None:
    """Malformed Celery headers: dead-lettered (or refused), the worker keeps serving."""
    before = len(served.letters())
    served.publish(_body(served), headers={"task": SAVE_TASK, **headers})
    served.new_letters_after(before)
    served.still_serving()


@pytest.mark.parametrize(
    "embed",
    [
        {"chain": [{"task": DELETE_TASK, "args": [], "kwargs": {}}]},
        {"callbacks": [{"task": DELETE_TASK, "args": [], "kwargs": {}}]},
        {"errbacks": "not a list"},
        {"chord": {"task": "celery.chord_unlock"}},
    ],
    ids=["chain", "callbacks", "errbacks-garbage", "chord"],
)
def test_workflow_fields_refused(served: Served, embed: dict[str, Any]) -> None:
    """A save message that asks for follow-up tasks (chain, callbacks, chord) is refused:
    the layer never sends them, and they would let a message trigger other tasks."""
    before = len(served.letters())
    served.publish(_body(served, embed), headers={"task": SAVE_TASK})
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "BadMessage"
    served.still_serving()
