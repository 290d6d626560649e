"""Catalogue: thread ids no one may use. Refused at the agent before anything is enqueued."""

from __future__ import annotations

from typing import Any

import pytest
from agents_persistence import InvalidThreadId

from tests.catalogue.cases import BAD_THREAD_IDS
from tests.catalogue.conftest import Agent
from tests.support import sample_state


@pytest.mark.parametrize("thread_id", list(BAD_THREAD_IDS.values()), ids=list(BAD_THREAD_IDS))
def test_agent_refuses(agent: Agent, thread_id: Any) -> None:
    """save/load/delete with the id raise InvalidThreadId; nothing is enqueued or touched."""
    with pytest.raises(InvalidThreadId):
        agent.client.save_state(thread_id, sample_state())
    with pytest.raises(InvalidThreadId):
        agent.client.save_state(thread_id, sample_state(), version=7)
    with pytest.raises(InvalidThreadId):
        agent.client.load_state(thread_id)
    with pytest.raises(InvalidThreadId):
        agent.client.load_checkpoint(thread_id)
    with pytest.raises(InvalidThreadId):
        agent.client.delete_thread(thread_id)
    agent.assert_untouched()
    assert agent.client.pending == {}
    agent.assert_still_serving()
