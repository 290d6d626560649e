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
    sentinel = Settings(
        _env_file=None,
        broker_url="redis+sentinel://127.0.0.1:26379/mymaster/1",
        visibility_timeout_seconds=100,
    )
    assert not doctor._visibility(sentinel).ok  # a Redis broker behind Sentinel too


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


def test_eviction_and_persistence_are_checked_on_every_primary_of_a_cluster() -> None:
    good = {"maxmemory_policy": "noeviction", "aof_enabled": "0", "role": "master"}
    infos: dict[str, dict[str, Any]] = {
        f"10.0.0.{i}:7000": {**good, "connected_slaves": 1} for i in (1, 2, 3)
    }
    assert doctor._eviction(infos).detail == "maxmemory-policy is noeviction (each of 3 primaries)"
    assert doctor._persistence(infos).ok
    infos["10.0.0.2:7000"] = {**good, "maxmemory_policy": "allkeys-lru", "connected_slaves": 0}
    eviction, persistence = doctor._eviction(infos), doctor._persistence(infos)
    assert not eviction.ok
    assert "10.0.0.2:7000: allkeys-lru" in eviction.detail
    assert "10.0.0.1:7000: noeviction" in eviction.detail
    assert not persistence.ok
    assert (
        "10.0.0.2:7000: appendonly no, role master, 0 connected replica(s)" in persistence.detail
    )
    assert not doctor._eviction({}).ok  # a server that says nothing passes nothing
