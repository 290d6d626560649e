"""Messages the consumer dead-letters itself, while the dead-letter list cannot be written.

Messages that are not valid task messages (a body that does not decode, an unknown task,
a refused content type, headers Celery cannot read, no task at all) are dead-lettered by
the worker's consumer, before any task runs. While the list cannot be written, because its
key holds a string (``WRONGTYPE``) or because the store is down, such a message must not
be acked or rejected (it would be lost) nor spun on: the consumer holds it for a backoff,
then publishes a copy to the tail of its queue and acks the original. Real workers and
redis-servers (the broker a server of its own); raw messages published with kombu.

The first test also prints the worker's CPU while only those messages cycle, beside the
same worker idle (a figure, not asserted).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from agents_persistence.tasks.protocol.names import SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters
from kombu import Connection, Producer

from tests.faults.conftest import Fleet, FleetFactory, worker_cpu_seconds
from tests.support import sample_state

#: Good saves handed off while the messages are held (each must be stored).
GOOD = 100
#: The consumer's (throttled) report that the list is unreachable.
UNAVAILABLE = "messages to dead-letter are held and re-published"
CRITICAL_LINE = re.compile(r"CRITICAL/([^\]]+)\].*dead-letter list .* cannot be written")
_ENVELOPE = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: (kind, body, content type, headers or None): one of each way a message reaches the
#: consumer's dead-lettering; ``MARK`` in the body becomes the message's own mark.
JUNK: list[tuple[str, bytes, str, dict[str, Any] | None]] = [
    ("unknown-task", json.dumps([[], {"mark": "MARK"}, _ENVELOPE]).encode(), "application/json",
     {"task": "agents_persistence.no_such_task"}),
    ("not-a-task", b'{"hello": "MARK"}', "application/json", None),
    ("undecodable", b"{not json MARK", "application/json", None),
    ("pickle", b"\x80\x04MARK.", "application/x-python-serialize", {"task": SAVE_TASK}),
    ("bad-header", json.dumps([[], {"mark": "MARK"}, _ENVELOPE]).encode(), "application/json",
     {"task": SAVE_TASK, "retries": -1}),
    ("protocol-1", json.dumps({"task": SAVE_TASK, "id": "MARK", "args": 5}).encode(),
     "application/json", None),
]  # fmt: skip


def _publish_junk(fleet: Fleet, tag: str) -> list[str]:
    """Publish each kind of :data:`JUNK` raw onto the fleet's queue; returns their marks."""
    marks = []
    with Connection(fleet.settings.broker.get_secret_value()) as conn:
        producer = Producer(conn)
        for kind, body, content_type, task_headers in JUNK:
            mark = f"{tag}-{kind}"
            headers = {}
            if task_headers is not None:
                headers = {"id": mark, "lang": "py", "argsrepr": "", "kwargsrepr": ""}
                headers.update(task_headers)
            producer.publish(
                body.replace(b"MARK", mark.encode()),
                routing_key=fleet.queue,
                exchange="",
                content_type=content_type,
                content_encoding="utf-8" if content_type == "application/json" else "binary",
                headers=headers,
                retry=False,
            )
            marks.append(mark)
    return marks


def _dead_lettered_marks(fleet: Fleet) -> Counter[str]:
    """The marks found in the dead-letter list's entries (their bodies, base64)."""
    letters = DeadLetters(fleet.store.dead_letter_list(fleet.settings.dead_letter_max_length))
    found: Counter[str] = Counter()
    for entry in letters.iter_entries():
        body = base64.b64decode(entry.get("body_base64") or "").decode("utf-8", "replace")
        match = re.search(r"j\d-[a-z0-9-]+", body)
        found[match.group(0) if match else f"unmarked:{entry.get('reason')}"] += 1
    return found


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def _lpush_calls(raw: redis.Redis) -> int:
    """LPUSH commands the broker has served (publishes, and copies of held messages)."""
    stats: dict[str, Any] = raw.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


def _failed_pushes(store: redis.Redis) -> int:
    """LPUSH commands the store refused: the consumer's attempts at the dead-letter list
    while its key holds a string (it tries again only after a hold)."""
    stats: dict[str, Any] = store.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("failed_calls", 0))


#: Messages the Redis broker holds for a queue (KEYS[1]): queued, unacknowledged (KEYS[2])
#: and in the consumers' in-flight lists (named in KEYS[3]), read in one atomic step (read
#: one after the other, a message moving between them can be missed or counted twice).
_HELD_SCRIPT = """
local n = redis.call('LLEN', KEYS[1]) + redis.call('HLEN', KEYS[2])
for _, key in ipairs(redis.call('HKEYS', KEYS[3])) do n = n + redis.call('LLEN', key) end
return n
"""


def _held_in_broker(fleet: Fleet) -> int:
    keys = (fleet.queue, "unacked", INFLIGHT_REGISTRY)
    return int(fleet.broker_client().eval(_HELD_SCRIPT, len(keys), *keys))


def _watch_held(fleet: Fleet, count: int, until: Callable[[], bool], timeout: float) -> int:
    """Until ``until()``, check every 50 ms that the broker holds at least ``count``
    messages for the queue (queued, in flight or unacknowledged); returns the samples."""
    samples = 0
    deadline = time.monotonic() + timeout
    while not until():
        waiting = _held_in_broker(fleet)
        assert waiting >= count, f"the broker holds {waiting} messages, {count} expected"
        samples += 1
        assert time.monotonic() < deadline, f"timed out after {timeout}s"
        time.sleep(0.05)
    return samples


@pytest.mark.timeout(360)
def test_invalid_messages_wait_in_the_broker_while_the_dead_letter_key_holds_a_string(
    fleet_factory: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # A long visibility timeout: a held message waits (<= 2 s) unacknowledged in the worker
    # and must not come back as a duplicate under load.
    fleet = fleet_factory(broker="redis", visibility_timeout_seconds=60.0)
    cap = fleet.settings.task_retry_backoff_max_seconds  # the consumer's hold, at most
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    key = fleet.store.keys.dead_letters
    raw = fleet.store_server.client()
    broker = fleet.broker_client()

    # The worker idle, for the figure.
    window = 4 * cap
    idle_cpu = worker_cpu_seconds(worker)
    time.sleep(window)
    idle_cpu = worker_cpu_seconds(worker) - idle_cpu

    raw.set(key, "an operator's string")
    held_since = time.monotonic()
    junk = _publish_junk(fleet, "j1") + _publish_junk(fleet, "j2")

    # Good saves are stored meanwhile, and the broker never lets go of an invalid message.
    good = [f"good-{i}" for i in range(GOOD)]
    for tid in good:
        client.save_state(tid, sample_state(tid), version=1)
    client.flush(timeout=120)  # raises FlushTimeout if a good save is not stored by then
    assert fleet.store.stored_versions(good) == dict.fromkeys(good, 1)
    _wait(lambda: fleet.waiting_in_broker() == len(junk), 60, "only the junk in the broker")

    # Only the invalid messages now: each goes round through the queue's tail, paced.
    cpu_before, pushes_before = worker_cpu_seconds(worker), _lpush_calls(broker)
    attempts_before = _failed_pushes(raw)
    started = time.monotonic()
    samples = _watch_held(
        fleet,
        len(junk),
        lambda: (
            time.monotonic() - started >= window
            and _lpush_calls(broker) - pushes_before >= 2 * len(junk)
        ),
        timeout=120,
    )
    cycling = time.monotonic() - started
    copies = _lpush_calls(broker) - pushes_before
    cycling_cpu = worker_cpu_seconds(worker) - cpu_before
    attempts = _failed_pushes(raw) - attempts_before
    # One attempt at the list per hold (half a second at the very least), not one per message.
    assert 1 <= attempts <= cycling / 0.5 + 1, (attempts, cycling)
    # At most one copy per message every cap / 2 seconds (the shortest hold after the first
    # failures), give or take the one released as the pause ends.
    assert copies <= 2 * len(junk) * (cycling / (cap / 2) + 1), (copies, cycling)
    assert raw.get(key) == b"an operator's string"
    assert worker.running

    # The operator's fix: every invalid message is dead-lettered once; the broker drains.
    raw.delete(key)
    fixed_at = time.monotonic()
    _wait(
        lambda: fleet.dead_letters() >= len(junk) and fleet.waiting_in_broker() == 0,
        60 + 2 * cap,
        "the held messages to be dead-lettered",
    )
    assert _dead_lettered_marks(fleet) == Counter(junk)

    # The CRITICAL line: at least once, at most once a minute per process.
    lines = [m.group(1) for m in map(CRITICAL_LINE.search, worker.log_text().splitlines()) if m]
    assert lines, worker.log_tail()
    per_process = Counter(lines)
    assert max(per_process.values()) <= 1 + int((fixed_at - held_since) // 60), per_process
    assert f"DEL {key}" in worker.log_text()

    with capsys.disabled():
        print(
            f"\n{len(junk)} invalid messages held, key a string, hold cap {cap:g} s: "
            f"{copies} copies and {attempts} attempts at the list in {cycling:.1f} s "
            f"({samples} broker samples, never fewer than {len(junk)} held); worker CPU "
            f"{100 * cycling_cpu / cycling:.1f}% while only they cycled vs "
            f"{100 * idle_cpu / window:.1f}% idle"
        )


@pytest.mark.timeout(360)
def test_invalid_messages_outlive_a_store_outage(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(broker="redis", visibility_timeout_seconds=60.0)
    settings = fleet.settings
    worker = fleet.worker(concurrency=2)
    client = fleet.client()

    fleet.store_server.stop()  # by PID; the broker is another server
    down_since = time.monotonic()
    junk = _publish_junk(fleet, "j1")
    good = [f"good-{i}" for i in range(10)]
    for tid in good:
        client.save_state(tid, sample_state(tid), version=1)  # touches only the broker

    # Down for longer than the core's whole retry schedule, several times over: the
    # invalid messages stay in the broker throughout.
    outage = 3 * settings.store_retry_span_seconds
    worker.wait_for_log(UNAVAILABLE, timeout=60)
    _watch_held(
        fleet, len(junk), lambda: time.monotonic() - down_since >= outage, timeout=outage + 60
    )
    assert worker.running

    fleet.store_server.start()  # same port; no AOF, so the list starts empty
    _wait(
        lambda: (
            fleet.dead_letters() >= len(junk)
            and fleet.waiting_in_broker() == 0
            and fleet.store.stored_versions(good) == dict.fromkeys(good, 1)
        ),
        120,
        "the invalid messages dead-lettered and the good saves stored",
    )
    assert _dead_lettered_marks(fleet) == Counter(junk)
    assert worker.log_count(UNAVAILABLE) <= 1 + int((time.monotonic() - down_since) // 60)


@pytest.mark.timeout(360)
def test_invalid_messages_wait_in_rabbitmq_while_the_dead_letter_key_holds_a_string(
    fleet_factory: FleetFactory,
) -> None:
    """The same on RabbitMQ (copies published through the default exchange, with publisher
    confirms): good saves flow; after several holds and the fix, each invalid message is
    dead-lettered once (RabbitMQ does not show a client its unacknowledged messages, so
    the broker's count is only checked at the end)."""
    fleet = fleet_factory(broker="rabbitmq")
    cap = fleet.settings.task_retry_backoff_max_seconds
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    key = fleet.store.keys.dead_letters
    raw = fleet.store_server.client()
    raw.set(key, "an operator's string")

    junk = _publish_junk(fleet, "j1")
    good = [f"good-{i}" for i in range(20)]
    for tid in good:
        client.save_state(tid, sample_state(tid), version=1)
    client.flush(timeout=120)
    assert fleet.store.stored_versions(good) == dict.fromkeys(good, 1)
    # Each attempt after the first follows a hold that ended with copies: several rounds.
    _wait(lambda: _failed_pushes(raw) >= 4, 60 + 4 * cap, "four attempts at the list")
    assert raw.get(key) == b"an operator's string"

    raw.delete(key)
    _wait(
        lambda: fleet.dead_letters() >= len(junk) and fleet.waiting_in_broker() == 0,
        60 + 2 * cap,
        "the held messages to be dead-lettered",
    )
    assert _dead_lettered_marks(fleet) == Counter(junk)
    assert worker.running
