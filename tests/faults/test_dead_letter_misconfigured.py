"""A dead-letter list whose key holds another Redis type, with real workers and servers.

An operator wrote a string where ``<namespace>:deadletter`` belongs (``WRONGTYPE``): no
message can be dead-lettered, and no retry fixes that. The worker must neither ack such a
message (its outcome is not durable) nor spin on it: it re-publishes it with the longest
retry countdown and logs CRITICAL, naming the key and the fix, at most once a minute per
process. Meanwhile the queue's good saves are stored; once the operator deletes the key,
every held message is dead-lettered, once.

The test also prints how long the good saves took with the list healthy and with its key
misconfigured, side by side (a figure, not asserted).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest
from agents_persistence.tasks import CeleryCheckpointer
from agents_persistence.tasks.protocol.messages import batch_message
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters

from tests.faults.conftest import Fleet, FleetFactory
from tests.support import sample_state

#: Invalid save messages per round (each must be dead-lettered).
BAD = 12
#: Good saves per round (each must be stored).
GOOD = 200
#: Each round also sends one batch of a good entry and an invalid one.
CRITICAL_LINE = re.compile(r"CRITICAL/([^\]]+)\].*dead-letter list .* cannot be written")


def _send_round(fleet: Fleet, client: CeleryCheckpointer, tag: str) -> tuple[float, list[str]]:
    """Send ``BAD`` invalid saves and a batch with one invalid entry, then ``GOOD`` saves;
    wait until the good ones (the batch's included) are stored. Returns the seconds from
    the first send until then, and the invalid thread ids."""
    namespace = client.namespace
    bad = [f"{tag}-bad-{i}" for i in range(BAD)]
    started = time.monotonic()
    for i, tid in enumerate(bad):
        kwargs = {"namespace": namespace, "thread_id": tid, "version": i + 1,
                  "state": "{not json", "saved_at_ms": 1}  # fmt: skip
        client.app.send_task(SAVE_TASK, kwargs=kwargs, queue=fleet.queue)
    batch = batch_message(
        namespace, [fleet.store.prepare(f"{tag}-batch-good", sample_state(tag), version=1)]
    )
    bad_entry = {**batch["entries"][0], "thread_id": f"{tag}-batch-bad", "state": "{not json"}
    batch["entries"].append(bad_entry)
    client.app.send_task(SAVE_BATCH_TASK, kwargs=batch, queue=fleet.queue)
    bad.append(f"{tag}-batch-bad")
    good = [f"{tag}-good-{i}" for i in range(GOOD)]
    for tid in good:
        client.save_state(tid, sample_state(tid), version=1)
    client.flush(timeout=120)  # raises FlushTimeout if a good save is not stored by then
    elapsed = time.monotonic() - started
    expected = [*good, f"{tag}-batch-good"]
    assert fleet.store.stored_versions(expected) == dict.fromkeys(expected, 1)
    return elapsed, bad


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def _dead_lettered(fleet: Fleet) -> Counter[str]:
    letters = DeadLetters(fleet.store.dead_letter_list(fleet.settings.dead_letter_max_length))
    return Counter(str(e["kwargs"]["thread_id"]) for e in letters.iter_entries())


@pytest.mark.timeout(360)
def test_good_saves_flow_while_the_dead_letter_key_holds_a_string(
    fleet_factory: FleetFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A long visibility timeout: a held message waits (countdown <= 2 s) unacknowledged in
    # the worker, and must not come back as a duplicate under load.
    fleet = fleet_factory(broker="redis", visibility_timeout_seconds=60.0)
    cap = fleet.settings.task_retry_backoff_max_seconds
    worker = fleet.worker(concurrency=2)
    client = fleet.client()
    key = fleet.store.keys.dead_letters
    raw = fleet.store_server.client()

    # The list healthy: every invalid message is dead-lettered.
    healthy_seconds, healthy_bad = _send_round(fleet, client, "ok")
    _wait(lambda: fleet.dead_letters() == len(healthy_bad), 60, "the first dead letters")
    assert _dead_lettered(fleet) == Counter(healthy_bad)
    assert worker.log_count("cannot be written") == 0

    # An operator's string where the list belongs.
    raw.delete(key)
    raw.set(key, "an operator's string")
    held_since = time.monotonic()
    misconfigured_seconds, bad = _send_round(fleet, client, "mis")

    # The invalid ones cycle through the broker (each re-published at least twice), never
    # acked without a copy in the broker, never in a tight loop, and the key is untouched.
    worker.wait_for_tasks(SAVE_TASK, 2 * BAD, timeout=120, outcome="retry")
    worker.wait_for_tasks(SAVE_BATCH_TASK, 2, timeout=120, outcome="retry")
    _wait(lambda: fleet.waiting_in_broker() >= len(bad), 60, "the held messages in the broker")
    held_seconds = time.monotonic() - held_since
    assert raw.get(key) == b"an operator's string"
    retries = worker.task_count(SAVE_TASK, "retry")
    # At most one re-publish per message every cap / 2 seconds (the shortest countdown).
    assert retries <= BAD * (held_seconds / (cap / 2) + 1), (retries, held_seconds)

    # The operator's fix: every held message is dead-lettered, once; the broker drains.
    raw.delete(key)
    fixed_at = time.monotonic()
    _wait(
        lambda: fleet.dead_letters() >= len(bad) and fleet.waiting_in_broker() == 0,
        60 + 2 * cap,
        "the held messages to be dead-lettered",
    )
    assert _dead_lettered(fleet) == Counter(bad)
    entries = DeadLetters(fleet.store.dead_letter_list(100)).list()
    assert {e["error"] for e in entries} == {"InvalidSnapshot"}

    # The CRITICAL line: at least once, at most once a minute per pool process.
    lines = [m.group(1) for m in map(CRITICAL_LINE.search, worker.log_text().splitlines()) if m]
    assert lines, worker.log_tail()
    per_minute_bound = 1 + int((fixed_at - held_since) // 60)
    per_process = Counter(lines)
    assert max(per_process.values()) <= per_minute_bound, per_process
    assert f"DEL {key}" in worker.log_text()
    assert worker.running

    with capsys.disabled():
        print(
            f"\n{GOOD} good saves + {BAD + 1} invalid, 1 worker -c 2, countdown cap {cap:g} s: "
            f"stored in {healthy_seconds:.2f} s (dead-letter list healthy) vs "
            f"{misconfigured_seconds:.2f} s (its key a string): "
            f"{misconfigured_seconds / healthy_seconds:.2f}x; "
            f"{retries} re-publishes while held, {len(lines)} CRITICAL line(s)"
        )
