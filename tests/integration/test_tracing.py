"""Extra [otel]: an agent's save_state span and the worker's write span share one trace,
carried in the message's headers to a real prefork worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StackFactory
from tests.support import sample_state

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] extra")

from agents_persistence.tasks import tracing  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis]

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def agent_spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory; tracing undone afterwards."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, otel_sdk.TracerProvider):
        provider = otel_sdk.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        tracing.uninstrument()


def worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Only whole lines: the worker may be writing the next one as this reads.
    *lines, _partial = path.read_text().split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def test_the_workers_write_span_is_in_the_agents_trace(
    stack_factory: StackFactory, agent_spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    stack = stack_factory(tracing=True)
    stack.env["AP_TEST_SPANS_FILE"] = str(spans_file)
    stack.worker(concurrency=2, app="tests.integration.otel_worker_app")
    client = stack.client(mode="durable")
    assert tracing.enabled()
    client.save_state("traced-1", sample_state("a"), version=1).wait(30)
    client.save_state("traced-2", sample_state("b"), version=1).wait(30)

    saves = [
        s for s in agent_spans.get_finished_spans() if s.name == "agents_persistence.save_state"
    ]
    assert len(saves) == 2
    agent_traces = {format(s.context.trace_id, "032x"): s for s in saves if s.context}
    assert len(agent_traces) == 2  # one trace per hand-off

    deadline = time.monotonic() + 30
    writes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        writes = [s for s in worker_spans(spans_file) if s["name"] == "agents_persistence.write"]
        if len(writes) >= 2:
            break
        time.sleep(0.1)
    assert len(writes) == 2, worker_spans(spans_file)
    for write in writes:
        assert write["trace_id"] in agent_traces, (write, list(agent_traces))
        thread = write["attributes"]["agents_persistence.thread_id"]
        agent = agent_traces[write["trace_id"]]
        assert agent.attributes is not None
        assert agent.attributes["agents_persistence.thread_id"] == thread
    # The worker's task span (Celery instrumentation) sits between the two. It ends (and is
    # exported) after the write span inside it: wait until both parents are in the file.
    by_id: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        by_id = {s["span_id"]: s for s in worker_spans(spans_file)}
        if all(write["parent_id"] in by_id for write in writes):
            break
        time.sleep(0.1)
    for write in writes:
        parent = by_id.get(write["parent_id"])
        assert parent is not None
        assert parent["trace_id"] == write["trace_id"]
        assert "agents_persistence.save_state" in parent["name"]
