"""A worker fleet behind Redis Sentinel: the store (``redis+sentinel://``) and the broker
(kombu's ``sentinel://``) on one primary + replica + 3 sentinels, ``replica_acks=1``.

Four agent threads hand off a stream of saves through :class:`CeleryCheckpointer` (durable
mode) to two real ``celery worker`` subprocesses; mid-stream the primary is SIGKILLed by PID,
the sentinels promote the replica, and the store and the broker follow it. Every hand-off is
then reconciled (:mod:`tests.faults.reconcile`): durable, superseded, dead-lettered, failed
to the caller, or lost; lost must be 0. The broker's publishes wait for the replica
(``broker_replica_acks`` follows ``replica_acks`` on a Sentinel broker), so a message the
old primary took is on the replica before ``save_state`` returns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from agents_persistence import PersistenceError, RedisCheckpointer
from agents_persistence.config import Settings
from agents_persistence.connect import blocking_client
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from agents_persistence.tasks.devtools.topologies import RedisSentinelTopology

from tests.faults.conftest import FAULT_SETTINGS
from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import Ledger, reconcile, write_result
from tests.integration.conftest import WorkerFactory
from tests.support.celery_cli import node_name, wait_for_reply
from tests.support.celery_worker import CeleryWorker, settings_env

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]

PASSWORD = "s3ntinel-fleet-pw"
TOTAL = 2400
BROKER_DB = 1


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, PersistenceError, OSError):
            pass  # a server still coming back: look again
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _broker_waiting(broker: Any, queue: str) -> int:
    """Messages the broker still holds for ``queue``: queued, in flight, unacknowledged."""
    inflight = sum(int(broker.llen(k)) for k in broker.hkeys(INFLIGHT_REGISTRY))
    return int(broker.llen(queue)) + inflight + int(broker.hlen("unacked"))


def test_store_and_broker_fail_over_together_and_lose_nothing(
    own_sentinel: Callable[..., RedisSentinelTopology],
    celery_worker_factory: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = own_sentinel(password=PASSWORD)
    sentinels = ";".join(f"sentinel://:{PASSWORD}@{s.host}:{s.port}" for s in group.sentinels)
    tag = uuid.uuid4().hex[:8]
    fields: dict[str, Any] = {
        **FAULT_SETTINGS,
        "redis_url": group.url(),
        "broker_url": f"{sentinels}/{BROKER_DB}",
        "broker_master_name": group.service,
        "namespace": f"sf-{tag}",
        "queue": f"sentinel-fleet-{tag}",
        "replica_acks": 1,
        "replica_ack_timeout_seconds": 0.5,
        # ride out the failover (down-after 3 s, then the election) where it is cheap
        "publish_max_retries": 6,
        "retry_deadline_seconds": 8.0,
        "retry_attempts": 20,
        "task_soft_time_limit_seconds": 25.0,
        "task_time_limit_seconds": 40.0,
    }
    settings = Settings(_env_file=None, **fields)
    assert settings.broker_replica_acks == 1  # follows replica_acks on a Sentinel broker
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    client = CeleryCheckpointer(store, app)
    broker = blocking_client(group.url(db=BROKER_DB), socket_timeout=10.0)
    env = settings_env(**fields)
    workers = [celery_worker_factory(env, concurrency=1, name=f"sf{i}") for i in range(2)]
    ledger = Ledger()
    stream = Stream(client, ledger, thread_ids("agent", 100_000), total=TOTAL, producers=4)
    try:
        stream.start()
        stream.wait_for(TOTAL // 3, timeout=180)
        victim = group.primary()
        channels_before = set(broker.hkeys(INFLIGHT_REGISTRY))
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL by PID
        promoted = group.wait_failover(victim)
        failover_seconds = time.monotonic() - killed_at
        assert promoted is not victim
        victim.start()  # rejoins as the new primary's replica: the acks resume
        # the workers consume from the new primary through this project's transport (an
        # in-flight list per channel), not kombu's own
        _wait_for(
            "in-flight lists of the workers' new channels",
            lambda: bool(set(broker.hkeys(INFLIGHT_REGISTRY)) - channels_before),
            timeout=120,
        )
        stream.join(timeout=600)
        _wait_for(
            "every hand-off stored and the broker empty",
            lambda: not _missing(ledger, store) and _broker_waiting(broker, settings.queue) == 0,
            timeout=300,
        )
        recovered_seconds = time.monotonic() - killed_at
        result = reconcile("sentinel failover: store + broker", ledger, store)
        result.extra.update(
            failover_seconds=round(failover_seconds, 1),
            recovered_seconds=round(recovered_seconds, 1),
            workers=len(workers),
        )
        write_result(result)
        with capsys.disabled():
            print(f"\n{result.line()}")
        assert result.attempted == TOTAL
        assert result.handed_off >= 2000
        result.assert_clean()
        # the workers kept consuming from the promoted primary, and answer remote control
        # through it
        assert promoted.client(password=PASSWORD).info("replication")["role"] == "master"
        _workers_answer(app, env, workers)
    finally:
        stream.stop()
        client.close(timeout=5.0)
        app.close()
        broker.close()
        store.close()


def _missing(ledger: Ledger, store: RedisCheckpointer) -> list[str]:
    """Saves handed off that the store does not hold at that version or a newer one."""
    held = store.stored_versions(ledger.thread_ids)
    return [
        f"{s.thread_id}@{s.version}"
        for s in ledger.saves
        if s.error is None and held.get(s.thread_id, 0) < s.version
    ]


def _workers_answer(app: Any, env: dict[str, str], workers: list[CeleryWorker]) -> None:
    """Every worker answers remote control through the broker (the app's ping, then
    celery's own command line as an operator runs it), and no log shows the password."""

    def every_worker_answers() -> bool:
        replies = app.control.ping(timeout=2.0) or []
        answered = {name.partition("@")[0] for reply in replies for name in reply}
        return answered == {w.name for w in workers}

    _wait_for("a ping answered by every worker", every_worker_answers, timeout=60)
    for worker in workers:
        assert wait_for_reply(env, ["inspect", "ping"], node_name(worker)) == {"ok": "pong"}
        assert PASSWORD not in worker.log_text()
