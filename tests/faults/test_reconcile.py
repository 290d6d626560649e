"""The reconciler itself, on the in-memory checkpointer: every class is reachable."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from agents_persistence import HandOffError, InMemoryCheckpointer
from agents_persistence.tasks.protocol.names import DELETE_TASK, SAVE_BATCH_TASK, SAVE_TASK

from tests.faults.reconcile import Ledger, reconcile, snapshot_for

pytestmark = pytest.mark.unit


def test_each_save_lands_in_exactly_one_class() -> None:
    store = InMemoryCheckpointer()
    ledger = Ledger()
    # durable: the newest save of "a"; superseded: the older one
    for version in (1, 2):
        store.save_state("a", snapshot_for("a", version), version=version)
        ledger.handed_off("a", version)
    # failed to the caller (typed), and untyped
    ledger.failed("b", 1, HandOffError("broker down"))
    ledger.failed("c", 1, ConnectionError("raw"))
    # lost: handed off, never stored; and wrong content at the right version
    ledger.handed_off("d", 5)
    store.save_state("e", snapshot_for("other", 3), version=3)
    ledger.handed_off("e", 3)
    # deleted after its saves: superseded by the tombstone, and must stay deleted
    store.save_state("f", snapshot_for("f", 1), version=1)
    ledger.handed_off("f", 1)
    ledger.deleted("f", store.delete_thread("f").current_version)

    result = reconcile("unit", ledger, store)
    assert (result.handed_off, result.durable, result.superseded) == (5, 1, 2)
    assert (result.failed, result.lost, result.untyped_errors) == (2, 2, 1)
    assert (result.deletes, result.stayed_deleted, result.resurrected) == (1, 1, 0)
    assert result.attempted == 7
    assert "lost=2" in result.line()
    with pytest.raises(AssertionError):
        result.assert_clean()


def test_a_thread_saved_over_its_tombstone_is_resurrected() -> None:
    store = InMemoryCheckpointer()
    ledger = Ledger()
    store.save_state("g", snapshot_for("g", 1), version=1)
    ledger.handed_off("g", 1)
    tomb = store.delete_thread("g", version=5).current_version
    ledger.deleted("g", tomb)
    store.save_state("g", snapshot_for("g", 9), version=9)  # nobody handed this off
    assert reconcile("unit", ledger, store).resurrected == 1


def test_a_dead_lettered_save_is_reported_not_lost() -> None:
    """Single saves, batch entries and escaped arguments are all found; a delete's entry
    and a save of another version are not."""
    store = InMemoryCheckpointer()
    ledger = Ledger()
    for tid, version in (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)):
        ledger.handed_off(tid, version)
    store.save_state("e", snapshot_for("e", 5), version=5)
    escaped = base64.b64encode(
        json.dumps({"args": [], "kwargs": {"thread_id": "c", "version": 3}}).encode()
    ).decode()
    entries: list[dict[str, Any]] = [
        {"task": SAVE_TASK, "kwargs": {"namespace": "n", "thread_id": "a", "version": 1}},
        {"task": SAVE_BATCH_TASK, "kwargs": {"entries": [{"thread_id": "b", "version": 2}]}},
        {"task": SAVE_TASK, "body_escaped": True, "body_base64": escaped},
        {"task": DELETE_TASK, "kwargs": {"thread_id": "d", "version": 4}},
        {"task": SAVE_TASK, "kwargs": {"thread_id": "e", "version": 5}},  # and stored: durable
    ]

    result = reconcile("unit", ledger, store, entries)

    assert (result.dead_lettered, result.lost, result.durable) == (3, 1, 1)
    assert "dead_lettered=3" in result.line()
    assert reconcile("unit", ledger, store).dead_lettered == 0  # no list of its own
