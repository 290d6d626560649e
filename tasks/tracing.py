"""OpenTelemetry traces (extra ``[otel]``): a hand-off and its write in one trace.

With ``AGENTS_PERSISTENCE_TRACING=true`` (or :func:`instrument` called), the agent's
``save_state`` runs in a span ``agents_persistence.save_state``; its message carries the
trace context in its headers (``opentelemetry-instrumentation-celery``: the task sender then
publishes through ``app.send_task``, whose publish signal the instrumentation hooks); the
worker runs the task in a span whose parent is that context, and its store write in a span
``agents_persistence.write`` inside it. The spans go to whatever tracer provider the process
configured (the SDK and its exporter are the application's choice; in a prefork worker,
configure it in ``worker_process_init``). Without ``instrument`` nothing here costs more
than a flag check; without the extra, ``instrument`` raises ImportError.

Buffered hand-offs are published in batches from a background thread, outside any
``save_state`` span: their messages carry no agent context (durable hand-offs do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["enabled", "instrument", "span", "uninstrument"]

_state = {"on": False}


def enabled() -> bool:
    """Whether spans are being made in this process."""
    return _state["on"]


def instrument() -> None:
    """Make spans in this process and carry trace context across the broker.

    Raises:
        ImportError: the ``[otel]`` extra is not installed.
    """
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _state["on"] = True


def uninstrument() -> None:
    """Stop making spans and carrying trace context (undoes :func:`instrument`)."""
    _state["on"] = False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span ``name`` with ``attributes`` around the block (nothing unless enabled)."""
    if not _state["on"]:
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("agents_persistence")
    with tracer.start_as_current_span(
        name, attributes={f"agents_persistence.{k}": v for k, v in attributes.items()}
    ):
        yield
