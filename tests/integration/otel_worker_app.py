"""``celery -A tests.integration.otel_worker_app worker``: the layer's worker with an
OpenTelemetry SDK whose spans go, one JSON line each, to ``$AP_TEST_SPANS_FILE``
(tests/integration/test_tracing.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from celery.signals import worker_process_init
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

__all__ = ["app"]


class FileExporter(SpanExporter):
    """Appends each finished span as one JSON line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for s in spans:
                assert s.context is not None
                out.write(
                    json.dumps(
                        {
                            "name": s.name,
                            "trace_id": format(s.context.trace_id, "032x"),
                            "span_id": format(s.context.span_id, "016x"),
                            "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                            "attributes": dict(s.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


@worker_process_init.connect(weak=False)
def _tracer_provider(**_: Any) -> None:
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(FileExporter(os.environ["AP_TEST_SPANS_FILE"]))
    )
    trace.set_tracer_provider(provider)


from agents_persistence.tasks import app  # noqa: E402 - after the hook above
