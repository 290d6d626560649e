"""The demo's parts that need no process: the fleet, the audit, child environments, secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agents_persistence import AgentStateSnapshot, TodoStatus
from agents_persistence.config import Settings
from agents_persistence.tasks.cli.context import Context
from agents_persistence.tasks.cli.fleet import (
    GrowingState,
    audit,
    metric_rows,
    percentile,
    run_fleet,
)
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.devtools.processes import child_env
from pydantic import SecretStr

pytestmark = pytest.mark.unit

PREFIX = "AGENTS_PERSISTENCE_"


def test_growing_state_grows_and_earlier_snapshots_stay_put() -> None:
    agent = GrowingState(7)
    first = agent.step()
    first_json = first.model_dump_json()
    for _ in range(4):
        last = agent.step()
    assert first.model_dump_json() == first_json  # handed off, then never mutated
    assert len(last.todos) == 6
    assert [t.status for t in last.todos[-3:]] == [
        TodoStatus.COMPLETED,
        TodoStatus.IN_PROGRESS,
        TodoStatus.PENDING,
    ]
    assert len(last.files) == 5
    assert last.scratchpad["step"] == 4
    # Built without validation, but valid: the JSON loads back into the same snapshot.
    assert AgentStateSnapshot.model_validate_json(last.model_dump_json()) == last


def test_percentile_is_nearest_rank_in_microseconds() -> None:
    values = [i * 1000 for i in range(1, 101)]  # 1..100 µs
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0


def test_fleet_and_audit_through_the_eager_checkpointer(
    eager_checkpointer: CeleryCheckpointer,
) -> None:
    ids = [f"agent-{i}" for i in range(3)]
    advanced: list[int] = []
    runs = run_fleet(eager_checkpointer, ids, 4, advance=lambda: advanced.append(1))
    assert len(advanced) == 12
    assert all(run.error is None and len(run.versions) == 4 for run in runs)
    assert all(run.versions == sorted(run.versions) for run in runs)

    result = audit(eager_checkpointer, runs)
    assert (result.handed_off, result.persisted, result.superseded, result.lost) == (12, 3, 9, 0)
    rows = dict(metric_rows(runs, result, coalesced=0, times=(0.0, 1.0, 2.0)))
    assert rows["lost"] == "0"
    assert rows["end-to-end rate"] == "6 snapshots/s"

    # A thread whose state is gone counts every snapshot it handed off as lost.
    eager_checkpointer.delete_thread("agent-1")
    lost = audit(eager_checkpointer, runs)
    assert (lost.persisted, lost.superseded, lost.lost) == (2, 6, 4)
    assert lost.lost_threads == ["agent-1"]


def test_a_failing_agent_stops_the_fleet_and_reports_its_error(
    eager_checkpointer: CeleryCheckpointer,
) -> None:
    runs = run_fleet(eager_checkpointer, ["ok", " "], 3)  # a blank thread id is refused
    bad = runs[1]
    assert bad.error is not None
    assert type(bad.error).__name__ == "InvalidThreadId"
    assert bad.versions == []


def test_child_env_rebuilds_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    original = Settings(
        redis_url="redis://user:pw@127.0.0.1:6379/3",
        namespace="ns.demo-1",
        ttl_seconds=1.5,
        eager=True,
        handoff_mode="buffered",
        compress_threshold_bytes=2048,
    )
    env = child_env(original)
    assert env[f"{PREFIX}REDIS_URL"] == "redis://user:pw@127.0.0.1:6379/3"
    assert env[f"{PREFIX}EAGER"] == "true"
    assert env[f"{PREFIX}BROKER_URL"] == "none"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == original

    no_compression = Settings(compress_threshold_bytes=None)
    for key, value in child_env(no_compression).items():
        monkeypatch.setenv(key, value)
    assert Settings().compress_threshold_bytes is None
    assert Settings() == no_compression


def test_the_cli_knows_every_password_it_must_hide() -> None:
    ctx = Context({"redis_url": "redis://u:p%40ss@host:1/0"}, console=None)  # type: ignore[arg-type]
    assert set(ctx.secrets()) == {"p%40ss", "p@ss"}
    settings = ctx.settings
    assert isinstance(settings.redis_url, SecretStr)
    assert "p@ss" not in repr(settings)
