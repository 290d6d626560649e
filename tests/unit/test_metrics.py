"""Metrics recorded where things happen: the store's retry wrapper, the worker's tasks, the
agent's hand-offs; names and labels as the README's table documents them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis.exceptions as rex
from agents_persistence import metrics
from agents_persistence.errors import StoreUnavailable
from agents_persistence.metrics import METRICS, Metrics, registry
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker.app import PersistenceApp
from agents_persistence.tasks.worker.metrics import dead_lettered

from tests.support import sample_state

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float:
    return registry().get_sample_value(name, labels) or 0.0


def test_a_store_call_is_timed_and_its_retries_counted() -> None:
    op = "test-op-retry"
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise rex.ConnectionError("reset")
        return "ok"

    policy = RetryPolicy(attempts=5, initial_backoff=0.001, max_backoff=0.001)
    assert policy.call(op, flaky) == "ok"
    assert sample("agents_persistence_store_seconds_count", op=op) == 1
    assert sample("agents_persistence_store_retries_total", op=op) == 2
    assert sample("agents_persistence_store_seconds_sum", op=op) > 0


def test_a_failed_store_call_is_timed_too() -> None:
    op = "test-op-down"

    def down() -> None:
        raise rex.ConnectionError("refused")

    policy = RetryPolicy(attempts=2, initial_backoff=0.001, max_backoff=0.001)
    with pytest.raises(StoreUnavailable):
        policy.call(op, down)
    assert sample("agents_persistence_store_seconds_count", op=op) == 1
    assert sample("agents_persistence_store_retries_total", op=op) == 2


@pytest.mark.anyio
async def test_an_async_store_call_is_timed() -> None:
    op = "test-op-async"
    calls = {"n": 0}

    async def flaky() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise rex.TimeoutError("slow")
        return 7

    policy = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.001)
    assert await policy.acall(op, flaky) == 7
    assert sample("agents_persistence_store_seconds_count", op=op) == 1
    assert sample("agents_persistence_store_retries_total", op=op) == 1


def test_hand_offs_and_worker_outcomes_are_counted(
    eager_checkpointer: CeleryCheckpointer,
) -> None:
    before = {
        "handoffs": sample("agents_persistence_handoffs_total", mode="durable"),
        "written": sample("agents_persistence_saves_total", outcome="written"),
        "stale": sample("agents_persistence_saves_total", outcome="stale"),
        "duplicate": sample("agents_persistence_saves_total", outcome="duplicate"),
        "lag": sample("agents_persistence_handoff_to_durable_seconds_count"),
        "save": sample("agents_persistence_store_seconds_count", op="save"),
    }
    eager_checkpointer.save_state("t-1", sample_state("a"), version=5)
    eager_checkpointer.save_state("t-1", sample_state("a"), version=5)
    eager_checkpointer.save_state("t-1", sample_state("old"), version=4)
    assert sample("agents_persistence_handoffs_total", mode="durable") == before["handoffs"] + 3
    assert sample("agents_persistence_saves_total", outcome="written") == before["written"] + 1
    assert sample("agents_persistence_saves_total", outcome="duplicate") == (
        before["duplicate"] + 1
    )
    assert sample("agents_persistence_saves_total", outcome="stale") == before["stale"] + 1
    assert sample("agents_persistence_handoff_to_durable_seconds_count") == before["lag"] + 3
    assert sample("agents_persistence_store_seconds_count", op="save") >= before["save"] + 3


def test_a_poison_message_counts_as_a_failed_save(eager_app: PersistenceApp) -> None:
    before = sample("agents_persistence_saves_total", outcome="failed")
    eager_app.tasks[SAVE_TASK].apply(kwargs={"namespace": eager_app.settings.namespace})
    assert eager_app.dead_letters.count() == 1
    assert sample("agents_persistence_saves_total", outcome="failed") == before + 1


def test_a_dead_lettered_batch_counts_each_entry() -> None:
    before = sample("agents_persistence_saves_total", outcome="failed")
    dead_lettered(SAVE_BATCH_TASK, {"entries": [{}, {}, {}]})
    dead_lettered(SAVE_BATCH_TASK, {"entries": "not a list"})
    assert sample("agents_persistence_saves_total", outcome="failed") == before + 4


def readme_metric_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^### Metrics\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, "README has no '### Metrics' section"
    rows = re.findall(r"^\| `(agents_persistence_\w+)` \| (\w+) \| ([^|]*) \|", match[1], re.M)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


def test_the_readme_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = readme_metric_rows()
    assert set(rows) == set(METRICS)
    for name, (kind, labels) in METRICS.items():
        shown_kind, shown_labels = rows[name]
        assert shown_kind == kind, name
        assert set(re.findall(r"`(\w+)`", shown_labels)) == set(labels), name


def test_the_registry_holds_exactly_the_documented_process_metrics() -> None:
    """The counters and histograms of a process are the documented ones (the gauges come
    from the workers' scrape-time collector)."""
    names = set()
    for family in registry().collect():
        kind = family.type
        name = family.name + ("_total" if kind == "counter" else "")
        names.add(name)
        assert METRICS[name][0] == kind
    assert names == {n for n, (kind, _) in METRICS.items() if kind != "gauge"}


def test_multiprocess_mode_sums_every_process_and_keeps_a_dead_ones_counts(
    tmp_path: Path,
) -> None:
    """Children forked after use_multiprocess each write their own file; the collector sums
    them, a child that exited included, once."""
    script = textwrap.dedent(
        """
        import os, sys
        from agents_persistence import metrics as m
        from prometheus_client import CollectorRegistry, multiprocess

        directory = m.use_multiprocess(sys.argv[1])
        m.metrics().saved("written", count=1)  # the parent counts too
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                m.metrics().saved("written", count=10)
                multiprocess.mark_process_dead(os.getpid())
                os._exit(0)
            os.waitpid(pid, 0)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        print(registry.get_sample_value(
            "agents_persistence_saves_total", {"outcome": "written"}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    (tmp_path / "stale.db").write_bytes(b"from an earlier run")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == 31.0
    assert not (tmp_path / "stale.db").exists()


def test_disabled_recording_counts_nothing_and_enable_resumes_the_same_metrics() -> None:
    op = "test-op-disabled"
    policy = RetryPolicy()
    metrics.disable()
    try:
        assert policy.call(op, lambda: 1) == 1
        assert sample("agents_persistence_store_seconds_count", op=op) == 0
    finally:
        metrics.enable()
    assert policy.call(op, lambda: 2) == 2
    assert sample("agents_persistence_store_seconds_count", op=op) == 1


def test_a_batch_records_what_one_save_at_a_time_records() -> None:
    now_ms = int(time.time() * 1000)
    stored = [
        ("written", now_ms - 7),
        ("written", now_ms - 40),
        ("duplicate", now_ms - 2_000),
        ("stale", now_ms - 100_000),
        ("written", now_ms - 40),
        ("written", now_ms + 5_000),  # a clock ahead: counted as 0 s
    ]
    one, batch = Metrics(), Metrics()
    for outcome, at in stored:
        one.saved(outcome, at)
    batch.saved_batch(stored)

    def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in m.registry.collect()
            for s in family.samples
            if s.name.startswith(("agents_persistence_saves_total", "agents_persistence_handoff"))
            and not s.name.endswith(("_sum", "_created"))
        }

    assert samples(batch) == samples(one)
    total = "agents_persistence_handoff_to_durable_seconds_sum"
    expected = one.registry.get_sample_value(total)
    assert batch.registry.get_sample_value(total) == pytest.approx(expected, abs=0.5)
