"""The demo's parts that need no process: the fleet, the audit, child environments, secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agents_persistence import AgentStateSnapshot, RedisCheckpointer, TodoStatus
from agents_persistence.config import Settings
from agents_persistence.tasks.cli import main as cli_main
from agents_persistence.tasks.cli.context import Context
from agents_persistence.tasks.cli.demo import DemoOptions
from agents_persistence.tasks.cli.fleet import (
    Audit,
    GrowingState,
    Traffic,
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
    traffic = Traffic.of(eager_checkpointer)
    # Durable: every snapshot published; agents saving at once may share a message.
    assert (traffic.superseded_in_buffer, traffic.published_snapshots) == (0, 12)
    assert 1 <= traffic.published_messages <= 12
    rows = dict(metric_rows(runs, result, traffic=traffic, times=(0.0, 1.0, 2.0)))
    assert rows["handed off"] == "12"
    assert rows["superseded in buffer"] == "0"
    assert rows["published (messages)"] == f"12 ({traffic.published_messages})"
    assert rows["persisted"] == "3"
    assert rows["superseded"] == "9"
    assert rows["lost"] == "0"
    assert rows["end-to-end rate"] == "6 published snapshots/s"

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
    sentinel = Context(
        {"broker_url": "redis+sentinel://:pw1@h:1,h:2/svc?sentinel_password=pw2"},
        console=None,  # type: ignore[arg-type]
    )
    sentinel.settings  # noqa: B018 - the settings' URLs join the overrides'
    assert {"pw1", "pw2"} <= set(sentinel.secrets())


def test_the_rate_counts_published_snapshots_not_the_ones_coalesced_in_the_buffer() -> None:
    """Buffered mode: 12 handed off, 8 replaced in the buffer, 4 published in 2 messages."""
    traffic = Traffic(superseded_in_buffer=8, published_snapshots=4, published_messages=2)
    result = Audit(handed_off=12, persisted=4, superseded=8)
    rows = dict(metric_rows([], result, traffic=traffic, times=(0.0, 1.0, 2.0)))
    assert rows["handed off"] == "12"
    assert rows["superseded in buffer"] == "8"
    assert rows["published (messages)"] == "4 (2)"
    assert rows["end-to-end rate"] == "2 published snapshots/s"


def test_buffered_traffic_counts_what_the_broker_took(
    persistence_settings: Settings, persistence_store: RedisCheckpointer
) -> None:
    """The buffered client counts coalesced snapshots apart from published ones and
    messages; ``since`` leaves out what came before (the demo's probe save)."""
    from agents_persistence.tasks.worker.app import create_app

    settings = persistence_settings.model_copy(update={"handoff_mode": "buffered"})
    store = persistence_store
    client = CeleryCheckpointer(store, create_app(settings, store=store), settings=settings)
    try:
        client.save_state("probe", AgentStateSnapshot())
        client.flush(5)
        before = Traffic.of(client)
        assert before.published_snapshots == 1
        assert client._publisher is not None
        # Hold the publisher's lock (re-entrant), so the four saves coalesce into one.
        with client._publisher._cond:
            for step in range(4):
                client.save_state("t", AgentStateSnapshot(scratchpad={"step": step}))
        client.flush(5)
        traffic = Traffic.of(client).since(before)
        assert traffic == Traffic(superseded_in_buffer=3, published_snapshots=1,
                                  published_messages=1)  # fmt: skip
        assert client.handed_off == 5
    finally:
        client.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--namespace", "mine", "--redis-url", "redis://h:1/0"],
        ["--namespace", "mine", "--redis-url", "redis://h:1/0", "demo"],
        ["--namespace", "other", "demo", "--namespace", "mine", "--redis-url", "redis://h:1/0"],
    ],
    ids=["after-the-command", "global", "the-command-wins"],
)
def test_demo_takes_namespace_and_redis_url_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]
) -> None:
    """``scripts/demo --namespace X`` passes its arguments after ``demo``: both places work."""
    from click.testing import CliRunner

    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[Settings, DemoOptions]] = []

    def fake_run_demo(settings: Settings, options: DemoOptions, console: object) -> int:
        seen.append((settings, options))
        return 0

    monkeypatch.setattr(cli_main, "run_demo", fake_run_demo)
    result = CliRunner().invoke(cli_main.main, argv)
    assert result.exit_code == 0, result.output
    ((settings, options),) = seen
    assert options.namespace == "mine"
    assert settings.namespace == "mine"
    assert settings.redis_url.get_secret_value() == "redis://h:1/0"
    assert "redis_url" in settings.model_fields_set  # so the demo uses it, not a private one
