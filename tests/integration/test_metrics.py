"""A real prefork worker serves every pool process's counts at /metrics.

The worker runs with ``--max-tasks-per-child``, so its pool children are replaced while the
saves run: the counts must still be exact (nothing of a replaced child lost, nothing counted
twice), and the gauges read Redis and the broker at scrape time.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from agents_persistence.metrics import METRICS, registry
from agents_persistence.tasks.devtools.binaries import free_port
from agents_persistence.tasks.protocol.names import DELETE_TASK, SAVE_TASK
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack, StackFactory
from tests.integration.test_cli import script
from tests.support import sample_state

pytestmark = [pytest.mark.integration, pytest.mark.redis]

HANDOFFS = "agents_persistence_handoffs_total"

#: Counted by agents (this process), or not at all here (no store call was retried).
AGENT_SIDE_OR_UNUSED = {
    "agents_persistence_handoffs_total",
    "agents_persistence_store_retries_total",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    """The endpoint's text and its samples by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_scrape(port: int, check: Callable[[Samples], bool], what: str) -> tuple[str, Samples]:
    last: list[tuple[str, Samples]] = []

    def ok() -> bool:
        try:
            last[:] = [scrape(port)]
        except (urllib.error.URLError, ConnectionError):
            return False
        return check(last[0][1])

    try:
        wait_for(ok, 60, what)
    except AssertionError:
        raise AssertionError(f"{what}; last scrape:\n{last[0][0] if last else '-'}") from None
    return last[0]


def test_a_prefork_worker_serves_exact_counts_and_gauges(stack_factory: StackFactory) -> None:
    port = free_port()
    stack: Stack = stack_factory(metrics_port=port)
    stack.worker(concurrency=2, extra_args=["--max-tasks-per-child", "7"])
    wait_scrape(port, lambda s: True, "the metrics endpoint")

    client = stack.client(mode="durable")
    handed_off = registry().get_sample_value(HANDOFFS, {"mode": "durable"}) or 0.0
    saves = 40
    for i in range(saves):
        client.save_state(f"m-{i}", sample_state(f"m-{i}"), version=10)
    client.save_state("m-0", sample_state("m-0 old"), version=5)  # stale
    client.flush(60)
    assert registry().get_sample_value(HANDOFFS, {"mode": "durable"}) == handed_off + saves + 1
    app, namespace = stack.app(), stack.settings.namespace
    delete = {"namespace": namespace, "thread_id": "m-1", "version": 100}
    app.send_task(DELETE_TASK, kwargs=delete, queue=stack.queue)
    app.send_task(SAVE_TASK, kwargs={"namespace": namespace}, queue=stack.queue)  # poison
    stack.wait_dead_letters(1)
    stack.wait_idle()

    text, samples = wait_scrape(
        port,
        lambda s: (
            value(s, "agents_persistence_saves_total", outcome="written") >= saves
            and value(s, "agents_persistence_saves_total", outcome="stale") >= 1
            and value(s, "agents_persistence_saves_total", outcome="failed") >= 1
            and value(s, "agents_persistence_deletes_total", outcome="written") >= 1
        ),
        "the worker's counts",
    )
    # Exact: every pool process counted once, replaced children included.
    assert value(samples, "agents_persistence_saves_total", outcome="written") == saves
    assert value(samples, "agents_persistence_saves_total", outcome="stale") == 1
    assert value(samples, "agents_persistence_saves_total", outcome="failed") == 1
    assert value(samples, "agents_persistence_saves_total", outcome="duplicate") == 0
    assert value(samples, "agents_persistence_deletes_total", outcome="written") == 1
    assert value(samples, "agents_persistence_handoff_to_durable_seconds_count") == saves + 1
    assert value(samples, "agents_persistence_store_seconds_count", op="save") >= saves + 1
    # The gauges, read at scrape time.
    assert value(samples, "agents_persistence_dead_letters") == 1
    assert value(samples, "agents_persistence_threads", state="live") == saves - 1
    assert value(samples, "agents_persistence_queue_depth") == 0
    # 43 tasks on 2 children of at most 7 tasks each: the pool replaced children meanwhile,
    # and each one's counts are still there, once.
    assert "agents_persistence_store_seconds_bucket" in text
    served = {name for (name, _labels) in samples}
    for name, (kind, _) in METRICS.items():
        if kind == "histogram":
            assert f"{name}_bucket" in served, name
        elif name not in AGENT_SIDE_OR_UNUSED:
            assert any(s.startswith(name) for s in served), name


def test_queue_depth_counts_waiting_hand_offs(stack_factory: StackFactory) -> None:
    """With the pool paused by a slow queue (no consumer for it), the gauge sees the backlog."""
    port = free_port()
    stack: Stack = stack_factory(metrics_port=port)
    # The worker consumes another queue: the namespace's hand-offs wait.
    stack.worker(concurrency=1, queues=["elsewhere"])
    client = stack.client(mode="durable")
    for i in range(5):
        client.save_state(f"q-{i}", sample_state("q"))
    _, samples = wait_scrape(
        port,
        lambda s: value(s, "agents_persistence_queue_depth") == 5,
        "queue depth 5",
    )
    assert value(samples, "agents_persistence_threads", state="live") == 0


def test_stats_watch_reads_the_workers_endpoint(stack_factory: StackFactory) -> None:
    """``stats --watch`` shows the worker's writes while an agent hands off, and the gauges."""
    port = free_port()
    stack: Stack = stack_factory(metrics_port=port)
    stack.worker(concurrency=1)
    wait_scrape(port, lambda s: True, "the metrics endpoint")
    client = stack.client(mode="durable")
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            client.save_state(f"w-{i % 50}", sample_state("w"))
            i += 1
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        env = {**os.environ, **stack.env, "COLUMNS": "200"}
        done = subprocess.run(
            [script(), "stats", "--watch", "--count", "3", "--interval", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        stop.set()
        producer.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    writes = re.search(r"writes/s\s.*written ([\d,.]+)", out)
    assert writes, out
    assert float(writes[1].replace(",", "")) > 0, out
    assert re.search(r"hand-off to durable p50 / p99\s.*\d ms / [\d,.]+ ms", out), out
    assert re.search(r"threads live / expired\s.*\d+ / 0", out), out
    assert "unreachable" not in out
    assert re.search(r"dead letters\s.*\b0\b", out), out
