"""Fuzz: a real worker outlives a few thousand hostile queue entries and messages.

A seeded generator (no hypothesis: one reproducible stream) pushes entries straight onto the
worker's queue list on a private redis-server: raw bytes, broken JSON, JSON that is not a
kombu envelope, envelopes with fields of the wrong type, Celery messages with headers of
the wrong type, huge fields, compressed bodies (zlib bombs), Celery's built-in task names,
etas and expiries a worker cannot honour, and well-formed saves with bad snapshots. Then:

* the worker's main process is the one that started (0 restarts) and still stores a save;
* every entry thrown is accounted for: one dead letter each, nothing left in the queue, in
  flight, unacknowledged or set aside;
* every dead letter is bounded (``EXCERPT_BYTES``);
* the worker's peak memory (``VmHWM`` of the main process and its pool) stays bounded: no
  bomb was inflated.

Set ``FUZZ_SEED`` to replay another stream.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_PREFIX, UNPARSABLE_PREFIX
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import EXCERPT_BYTES

from tests.integration.conftest import Stack, StackFactory
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

ENTRIES = 2000
SEED = int(os.environ.get("FUZZ_SEED", "20261202"))
#: What a bomb would inflate to if anything decompressed it (~400 KB compressed).
BOMB_BYTES = 384 * 1024 * 1024
#: Peak resident memory allowed to the worker's main process and to each pool process: far
#: below one inflated bomb (the main process measured 157 MiB, with 8 MiB entries parsed).
PEAK_RSS_BYTES = 320 * 1024 * 1024

Entry = bytes


class Generator:
    """Hostile queue entries for ``stack``, drawn from one seeded random stream."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack = stack
        self.rng = rng
        packer = zlib.compressobj(6)
        chunk = b"\0" * (16 * 1024 * 1024)
        self.bomb = b"".join(packer.compress(chunk) for _ in range(BOMB_BYTES // len(chunk)))
        self.bomb += packer.flush()

    # -- building blocks -------------------------------------------------------------------
    def _json_value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return r.randint(-(2**70), 2**70)
        if kind == 1:
            return r.random() * 10 ** r.randint(-5, 300)
        if kind == 2:
            return "".join(chr(r.randint(1, 0x2FFF)) for _ in range(r.randint(0, 40)))
        if kind == 3:
            return r.choice([None, True, False])
        if kind in (4, 5):
            return [self._json_value(depth + 1) for _ in range(r.randint(0, 5))]
        return {str(self._json_value(depth + 1))[:20]: self._json_value(depth + 1) for _ in "ab"}

    def headers(self, **changes: Any) -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        return {
            "lang": "py", "task": SAVE_TASK, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "()", "kwargsrepr": "{}", "origin": "fuzz", "ignore_result": False,
            **changes,
        }  # fmt: skip

    def save_kwargs(self, state: str) -> dict[str, Any]:
        return {
            "namespace": self.stack.settings.namespace,
            "thread_id": f"fuzz-{self.rng.randrange(10**9)}",
            "version": 1,
            "state": state,
            "saved_at_ms": 1,
        }

    def envelope(
        self, headers: dict[str, Any], body: bytes | None = None, **props: Any
    ) -> dict[str, Any]:
        if body is None:
            body = json.dumps([[], self.save_kwargs("{}"), {}]).encode()
        return {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": headers.get("id"),
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.stack.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
                **props,
            },
        }

    @staticmethod
    def dump(value: Any) -> Entry:
        return json.dumps(value).encode()

    # -- the kinds -------------------------------------------------------------------------
    def raw_bytes(self) -> Entry:
        data = self.rng.randbytes(self.rng.randint(1, 2048))
        return b"\xff" + data  # never UTF-8 JSON

    def bad_json(self) -> Entry:
        text = json.dumps(self.envelope(self.headers()))
        cut = self.rng.randint(1, len(text) - 1)
        return (text[:cut] + self.rng.choice(["", "}", "]]", ",", "\\", '"'])).encode()

    def not_an_envelope(self) -> Entry:
        value = self._json_value()
        if isinstance(value, dict):
            value.pop("properties", None)
        return self.dump(value)

    def wrong_envelope(self) -> Entry:
        env = self.envelope(self.headers())
        bad = self.rng.choice([1, "x", [1], None, 2.5, True])
        where = self.rng.choice(
            ["properties", "delivery_tag", "delivery_info", "exchange", "headers", "body",
             "body_base64", "body_encoding", "content-type", "content-encoding"]
        )  # fmt: skip
        props = env["properties"]
        if where == "properties":
            env["properties"] = bad
        elif where == "delivery_tag":
            props["delivery_tag"] = self.rng.choice([1, None, "", [1]])
        elif where == "delivery_info":
            props["delivery_info"] = bad
        elif where == "exchange":
            props["delivery_info"] = {"exchange": self.rng.choice([1, None, []])}
        elif where == "headers":
            env["headers"] = self.rng.choice([1, "x", [1], 2.5, True])
        elif where == "body":
            env["body"] = self.rng.choice([1, [1], {"a": 1}, 2.5, True])
        elif where == "body_base64":
            env["body"] = "%%" + env["body"]
        elif where == "body_encoding":
            props["body_encoding"] = self.rng.choice(["rot13", 5, "hex"])
        else:
            env[where] = self.rng.choice([1, [1], {"a": 1}, 2.5, True])
        return self.dump(env)

    BAD_HEADERS: ClassVar[dict[str, list[Any]]] = {
        "task": [5, None, ["x"], {"a": 1}],
        "id": [5, None, "", ["x"]],
        "shadow": [5, ["x"], {"a": 1}],
        "root_id": [5, ["x"]],
        "parent_id": [{"a": 1}, 2.5],
        "group": [[1], 3],
        "argsrepr": [5, ["x"], "x" * 10_000],
        "kwargsrepr": [5, {"a": 1}],
        "origin": [[], 7],
        "retries": ["many", -1, 2.5, True, 10**30],
        "timelimit": [5, "x", [1], [1, 2, 3], ["a", "b"], [-1, 5], [10**30, None]],
        "eta": [5, ["x"], "tomorrow", "2026-13-45T00:00:00", "9999-12-31T23:59:59-23:59"],
        "expires": [5, {"a": 1}, "never", "0001-01-01T00:00:00"],
        "ignore_result": ["yes", 1, [True]],
        "stamps": [[1], "x"],
        "stamped_headers": ["x", [1, 2]],
        "group_index": ["x", 2.5],
    }

    def bad_header(self) -> Entry:
        name = self.rng.choice(sorted(self.BAD_HEADERS))
        value = self.rng.choice(self.BAD_HEADERS[name])
        return self.dump(self.envelope(self.headers(**{name: value})))

    def bad_property(self) -> Entry:
        name, value = self.rng.choice(
            [("correlation_id", [1]), ("reply_to", 5), ("priority", "high"), ("priority", 10**6)]
        )
        env = self.envelope(self.headers())
        env["properties"][name] = value
        return self.dump(env)

    def huge(self) -> Entry:
        size = self.rng.randint(2, 8) * 1024 * 1024
        if self.rng.random() < 0.5:
            return b"[" + b"1," * (size // 2)  # never closed
        return self.dump(self.envelope(self.headers(kwargsrepr="k" * size)))

    def compressed(self) -> Entry:
        headers = self.headers(compression=self.rng.choice(["zlib", "gzip", "bzip2"]))
        return self.dump(self.envelope(headers, body=self.bomb))

    def builtin_task(self) -> Entry:
        name = self.rng.choice(
            ["celery.group", "celery.chunks", "celery.chord", "celery.accumulate",
             "celery.backend_cleanup", "celery.starmap", "celery.map", "celery.chain",
             "celery.chord_unlock"]
        )  # fmt: skip
        return self.dump(self.envelope(self.headers(task=name), body=b"[[1, 2], {}, {}]"))

    def bad_time(self) -> Entry:
        now = time.time()
        when = self.rng.choice(
            [
                ("eta", now + self.rng.randint(3600, 10**8)),
                ("expires", now - self.rng.randint(1, 10**8)),
            ]
        )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when[1]))
        return self.dump(self.envelope(self.headers(**{when[0]: stamp})))

    def bad_snapshot(self) -> Entry:
        state = self.rng.choice(
            [
                "{not json",
                '{"todos": "x"}',
                '{"todos": [{"content": "x", "status": "done"}]}',
                '{"scratchpad": {"d": ' + "[" * 300 + "]" * 300 + "}}",
                '{"scratchpad": {"n": ' + "9" * 30 + "}}",
                '{"colour": "red"}',
                '{"files": {"a": 5}}',
            ]
        )
        body = json.dumps([[], self.save_kwargs(state), {}]).encode()
        return self.dump(self.envelope(self.headers(), body=body))

    def kinds(self) -> dict[str, tuple[float, Callable[[], Entry]]]:
        """Kind -> (weight, generator)."""
        return {
            "raw-bytes": (10, self.raw_bytes),
            "bad-json": (10, self.bad_json),
            "not-an-envelope": (10, self.not_an_envelope),
            "wrong-envelope": (15, self.wrong_envelope),
            "bad-header": (20, self.bad_header),
            "bad-property": (5, self.bad_property),
            "huge": (0.3, self.huge),
            "compressed": (2, self.compressed),
            "builtin-task": (5, self.builtin_task),
            "bad-time": (8, self.bad_time),
            "bad-snapshot": (10, self.bad_snapshot),
        }


def _vm_hwm(pid: int) -> int:
    """Peak resident set of ``pid`` in bytes (``VmHWM``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_worker_outlives_hostile_entries(stack_factory: StackFactory) -> None:
    """A few thousand generated hostile entries: the worker keeps its process, dead-letters
    each one (bounded), keeps its memory bounded, and still stores a good save."""
    stack = stack_factory(max_snapshot_bytes=64 * 1024, dead_letter_max_length=ENTRIES + 100)
    worker = stack.worker(concurrency=2)
    pid, children = worker.pid, worker.child_pids()
    broker = stack.broker
    assert broker is not None
    rng = random.Random(SEED)
    gen = Generator(stack, rng)
    kinds = gen.kinds()
    names = list(kinds)
    weights = [kinds[n][0] for n in names]
    thrown: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    pipe = broker.pipeline(transaction=False)
    for i in range(ENTRIES):
        kind = rng.choices(names, weights)[0]
        thrown[kind] += 1
        pipe.lpush(stack.queue, kinds[kind][1]())
        if i % 50 == 49:
            pipe.execute()
    pipe.execute()

    letters = stack.app().dead_letters
    deadline = time.monotonic() + 150
    while letters.count() < ENTRIES:
        assert worker.running, worker.log_tail()
        assert time.monotonic() < deadline, (
            f"{letters.count()} of {ENTRIES} dead-lettered, {stack.queued()} queued\n"
            + worker.log_tail()
        )
        time.sleep(0.2)
    stack.wait_idle(timeout=60)
    elapsed = time.monotonic() - started

    client = stack.client()
    client.save_state("after-fuzz", sample_state("after-fuzz")).wait(timeout=30)
    assert stack.store.load_state("after-fuzz") == sample_state("after-fuzz")

    assert worker.running
    assert worker.pid == pid
    restarts = 0 if worker.pid == pid else 1
    errors = collections.Counter(str(e.get("error")) for e in letters.iter_entries())
    sizes = [len(raw) for raw in letters.raw_entries()]
    assert letters.count() == ENTRIES, (thrown, errors)
    assert max(sizes) <= EXCERPT_BYTES
    assert not broker.keys(f"{UNPARSABLE_PREFIX}*")
    inflight = [
        k for k in broker.keys(f"{INFLIGHT_PREFIX}*") if broker.type(k) in (b"list", "list")
    ]
    assert not any(broker.llen(k) for k in inflight)
    peaks = {p: _vm_hwm(p) for p in [pid, *worker.child_pids()]}
    print(
        f"\nfuzz seed {SEED}: {ENTRIES} entries thrown in {elapsed:.1f} s "
        f"({dict(sorted(thrown.items()))})\n"
        f"dead-lettered: {letters.count()} ({dict(sorted(errors.items()))}); "
        f"largest entry {max(sizes)} bytes\n"
        f"worker restarts: {restarts}; pool processes replaced: "
        f"{len(set(children) - set(worker.child_pids()))}\n"
        f"peak RSS (VmHWM): " + ", ".join(f"{p}: {v / 2**20:.0f} MiB" for p, v in peaks.items())
    )
    assert all(v < PEAK_RSS_BYTES for v in peaks.values()), peaks
