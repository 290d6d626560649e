"""Catalogue: snapshots the agent may not hand off. Refused before anything is enqueued."""

from __future__ import annotations

import math
from typing import Any

import pytest
from agents_persistence import AgentStateSnapshot, InvalidSnapshot, SnapshotTooLarge
from agents_persistence.tasks import CeleryCheckpointer, create_app

from tests.catalogue.cases import BAD_SNAPSHOTS, deep
from tests.catalogue.conftest import Agent


@pytest.mark.parametrize("state", list(BAD_SNAPSHOTS.values()), ids=list(BAD_SNAPSHOTS))
def test_agent_refuses(agent: Agent, state: Any) -> None:
    """The snapshot raises InvalidSnapshot at save_state; nothing is enqueued or touched."""
    with pytest.raises(InvalidSnapshot):
        agent.client.save_state("victim", state)
    agent.assert_untouched()
    agent.assert_still_serving()


@pytest.mark.parametrize(
    "poison",
    [math.nan, math.inf, {1, 2}, deep(5000)],
    ids=["nan", "infinity", "set", "deep"],
)
def test_agent_refuses_model_mutated_after_validation(agent: Agent, poison: Any) -> None:
    """A model changed after validation (no re-check) is still refused when encoded."""
    state = AgentStateSnapshot()
    state.scratchpad["x"] = poison
    with pytest.raises(InvalidSnapshot):
        agent.client.save_state("victim", state)
    agent.assert_untouched()
    agent.assert_still_serving()


def test_agent_refuses_over_size_cap(agent: Agent) -> None:
    """A snapshot above max_snapshot_bytes raises SnapshotTooLarge (with both sizes)."""
    settings = agent.settings.model_copy(update={"max_snapshot_bytes": 4096})
    store = type(agent.store).from_settings(settings)
    client = CeleryCheckpointer(store, create_app(settings, store=store))
    try:
        with pytest.raises(SnapshotTooLarge) as info:
            client.save_state("victim", AgentStateSnapshot(files={"big": "x" * 5000}))
        assert info.value.limit == 4096
        assert info.value.size > 4096
        agent.assert_untouched()
        client.save_state("victim", AgentStateSnapshot(files={"small": "x" * 100}))
        assert agent.queued() == 1
    finally:
        store.close()
