"""LangGraph's own conformance suite (``langgraph-checkpoint-conformance``) on the saver.

Every capability the suite knows is implemented, so every one must be detected and pass:
a failing test of the suite fails this test, with the suite's report and failures in the
message. It runs on the machine's real redis-server (each capability on a fresh saver in this
test's namespace, deleted afterwards), in each way the saver can be built, and on fakeredis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import pytest
from agents_persistence.langgraph import RedisCheckpointSaver
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import CapabilityReport, ProgressCallbacks

from tests.langgraph.conftest import Savers

#: How each variant builds its saver: the URL (sync + asyncio clients); a sync client only
#: (the async methods run the sync ones in a thread); a TTL with refresh on read.
VARIANTS: dict[str, dict[str, object]] = {
    "async": {},
    "sync-client": {"asyncio": False},
    "ttl": {"ttl": 3600, "refresh_on_read": True},
}


def run_suite(name: str, make: Callable[[], RedisCheckpointSaver]) -> CapabilityReport:
    """Run the whole suite on fresh savers from ``make``; print and return its report."""

    async def factory() -> AsyncGenerator[BaseCheckpointSaver[str], None]:
        saver = make()
        try:
            yield saver
        finally:
            await saver.aclose()
            saver.close()

    registered = checkpointer_test(name=name)(factory)
    report = asyncio.run(validate(registered, progress=ProgressCallbacks.default()))
    report.print_report()
    return report


def assert_full(report: CapabilityReport) -> None:
    """Every capability detected, every test of each passed."""
    failures = {cap: r.failures for cap, r in report.results.items() if r.passed is not True}
    detected = {cap for cap, r in report.results.items() if r.detected}
    assert detected == {cap.value for cap in ALL_CAPABILITIES}, f"not detected: {failures}"
    assert not failures, f"conformance failures: {failures}"
    assert report.conformance_level() == "FULL"
    assert all(r.tests_passed > 0 and r.tests_failed == 0 for r in report.results.values())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_conformance_on_a_real_server(real_savers: Savers, variant: str) -> None:
    report = run_suite(
        f"RedisCheckpointSaver[{variant}]", lambda: real_savers.make(**VARIANTS[variant])
    )
    assert_full(report)
    assert real_savers.stored_keys(), "the suite wrote nothing to this namespace"


def test_conformance_on_fakeredis(fake_savers: Savers) -> None:
    assert_full(run_suite("RedisCheckpointSaver[fakeredis]", fake_savers.make))


def test_a_failing_saver_fails_the_check(fake_savers: Savers) -> None:
    """The check above can fail: a saver that forgets pending writes is caught."""

    class Forgetful(RedisCheckpointSaver):
        async def aput_writes(self, *args: object, **kwargs: object) -> None:
            return None

    def make() -> RedisCheckpointSaver:
        saver = fake_savers.make()
        return Forgetful(saver.client, aclient=saver.aclient, namespace=saver.namespace)

    report = run_suite("Forgetful", make)
    with pytest.raises(AssertionError, match="put_writes"):
        assert_full(report)
