"""The randomized fault schedule: a seeded chaos run of about two minutes (issue 13, part 5).

``scripts/chaos --seed N --minutes M`` runs longer ones with the same engine
(:mod:`tests.faults.chaos`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from tests.faults.chaos import ChaosConfig, run
from tests.faults.chaos_faults import ACTIONS, MAX_OUTAGE, MIN_OUTAGE, make_schedule
from tests.faults.conftest import FleetFactory
from tests.faults.reconcile import RESULTS_DIR, write_result
from tests.support.celery_cli import node_name, wait_for_reply

#: CI's seed; change it only together with a green run of the new one.
SEED = 20261201
#: Worker crashes inside Celery 5.7's prefork pool that the schedule provokes; the worker
#: exits, what it held comes back from the broker (nothing is lost). A run with one of these
#: is an expected failure; any other crash fails the test. (The pool child re-registered
#: after a broker reconnect, ``ValueError('file descriptor is None')``, is fixed:
#: agents_persistence.tasks.worker.pool.)
KNOWN_CELERY_CRASHES = (
    # The worker's group was SIGSTOPped longer than the soft time limit: on SIGCONT the
    # limit fires in a child in the middle of the pool's own pipe I/O, and the main
    # process reads a broken result frame (asynpool._recv_message).
    "Unrecoverable error: UnicodeDecodeError",
)


def test_schedule_is_seeded_bounded_and_one_fault_per_target_at_a_time() -> None:
    """The same seed gives the same timeline; outages lie in 0.5-30 s and end before the
    window does; a target is never broken twice at once; every kind of fault appears."""
    schedule = make_schedule(SEED, 600.0, workers=2)
    assert schedule == make_schedule(SEED, 600.0, workers=2)
    assert schedule != make_schedule(SEED + 1, 600.0, workers=2)
    busy_until: dict[str, float] = {}
    for fault in schedule:
        kind = fault.target.split("-")[0]
        assert fault.action in ACTIONS[kind]
        if fault.action == "child-sigkill":
            assert fault.outage == 0.0
        else:
            assert MIN_OUTAGE - 0.01 <= fault.outage <= MAX_OUTAGE + 0.01
        assert fault.at + fault.outage <= 600.0
        assert fault.at >= busy_until.get(fault.target, 0.0), fault
        busy_until[fault.target] = fault.at + fault.outage
    kinds = {(f.target.split("-")[0], f.action) for f in schedule}
    assert kinds == {(kind, action) for kind, actions in ACTIONS.items() for action in actions}
    assert [f.at for f in schedule] == sorted(f.at for f in schedule)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_fixed_seed(
    fleet_factory: FleetFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two minutes of worker, pool-child, store and broker SIGKILL/SIGSTOP/restarts under
    durable and buffered producers with deletes; then heal, wait without any flush, and
    reconcile: nothing lost, no version regression, no deleted thread back, workers answer
    (fresh saves stored, and ``celery inspect ping`` from every running worker)."""
    fleet = fleet_factory(broker="redis", store_aof=True, broker_aof=True)
    report = run(fleet, ChaosConfig(seed=SEED, seconds=120.0))
    with capsys.disabled():
        print()
        report.render(Console(width=130, force_terminal=False))
    write_result(report.results["all"])
    # The workers' logs outlive pytest's temp dirs here (git ignores the results directory).
    logs = RESULTS_DIR / "chaos-logs"
    shutil.rmtree(logs, ignore_errors=True)
    shutil.copytree(tmp_path, logs, ignore=shutil.ignore_patterns("redis-*"))
    everything = report.results["all"]
    assert len([a for a in report.timeline if a.began is not None]) >= 15
    assert everything.handed_off > 1000
    assert everything.deletes > 50
    assert report.lost() == 0, report.problems()
    assert report.regressions == [], report.regressions[:10]
    assert report.resurrected == [], report.resurrected[:10]
    assert report.probe[0] == report.probe[1], report.probe
    assert report.problems() == []
    live = [w for w in fleet.workers if w.running]
    assert len(live) == report.workers_running[0]
    for worker in live:  # Celery's own tools see every running worker (remote control)
        assert wait_for_reply(fleet.env, ["inspect", "ping"], node_name(worker)) == {"ok": "pong"}
    assert [c for c in report.crashes if not any(k in c for k in KNOWN_CELERY_CRASHES)] == []
    if report.crashes:
        pytest.xfail(f"a known crash inside Celery's prefork pool: {report.crashes}")
