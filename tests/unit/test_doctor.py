"""``agents-persistence doctor``'s checks that need no server of their own: settings, and the
clock against a store's TIME (the whole command: tests/integration/test_doctor.py)."""

from __future__ import annotations

from typing import Any

import pytest
from agents_persistence.config.settings import Settings
from agents_persistence.tasks.cli import doctor

pytestmark = pytest.mark.unit


class _Client:
    def __init__(self, seconds: int, micros: int) -> None:
        self.reply = (seconds, micros)

    def time(self) -> tuple[int, int]:
        return self.reply


class _Store:
    def __init__(self, seconds: int, micros: int = 0) -> None:
        self.client: Any = _Client(seconds, micros)


def test_a_visibility_timeout_below_a_task_and_its_countdown_fails_with_a_fix() -> None:
    bad = doctor._visibility(Settings(_env_file=None, visibility_timeout_seconds=100))
    assert not bad.ok
    assert "100s" in bad.detail
    assert "150s" in bad.detail  # hard limit 90 s + countdown cap 60 s
    assert "AGENTS_PERSISTENCE_VISIBILITY_TIMEOUT_SECONDS" in bad.fix
    assert doctor._visibility(Settings(_env_file=None)).ok


def test_other_brokers_redeliver_on_their_own() -> None:
    amqp = Settings(_env_file=None, broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert doctor._visibility(amqp).ok


def test_the_tombstone_check_names_the_redelivery_window() -> None:
    check = doctor._tombstones(Settings(_env_file=None))
    assert check.ok
    assert "363s" in check.detail


@pytest.mark.parametrize(("offset", "ok"), [(0.0, True), (0.8, True), (2.5, False), (-3.0, False)])
def test_clock_skew_against_the_stores_time(offset: float, ok: bool) -> None:
    now = 1_800_000_000.0
    store = _Store(int(now + offset), int(((now + offset) % 1) * 1e6))
    check = doctor._clock(store, now=lambda: now)  # type: ignore[arg-type]
    assert check.ok is ok
    assert f"{offset:+.3f}s" in check.detail
    assert bool(check.fix) is not ok
