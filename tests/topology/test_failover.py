"""Failover with ``replica_acks=1``: a primary SIGKILLed (by PID) while saves run; every save
that was acknowledged is present afterwards, on a Redis Cluster and behind Sentinel. And what
``replica_acks=0`` risks: a save acknowledged while its replica lagged is gone after failover.

Saves run on several threads, each over its own threads (ids) with rising versions; a save
counts as acknowledged when ``save_state`` returned (WAIT saw the replica hold it). Saves that
raised (the primary gone, the new one without a replica yet) are handed off but not
acknowledged: the caller still holds them (the Celery layer retries them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from agents_persistence import (
    AgentStateSnapshot,
    PersistenceError,
    RedisCheckpointer,
    ReplicaAcksMissing,
    RetryPolicy,
)
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
)

from tests.support import unique_namespace

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow]

#: Rides out a failover (cluster-node-timeout / down-after 3 s, then the election).
_PATIENT = RetryPolicy(attempts=40, initial_backoff=0.05, max_backoff=0.5, deadline=20.0)


@dataclass
class _Savers:
    """Threads saving until stopped; what was handed off and what was acknowledged."""

    store: RedisCheckpointer
    workers: int = 4
    ids_per_worker: int = 40
    handed_off: int = 0
    acked_saves: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for w in range(self.workers):
            thread = threading.Thread(target=self._run, args=(w,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: int) -> None:
        version = 0
        while not self._stop.is_set():
            version += 1
            tid = f"w{worker}-{version % self.ids_per_worker}"
            with self._lock:
                self.handed_off += 1
            try:
                self.store.save_state(
                    tid, AgentStateSnapshot(scratchpad={"v": version}), version=version
                )
            except PersistenceError as exc:
                with self._lock:
                    self.refused.append(type(exc).__name__)
                continue
            with self._lock:
                self.acked_saves += 1
                self.acknowledged[tid] = max(version, self.acknowledged.get(tid, 0))

    def acknowledged_count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive()


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _verify(savers: _Savers, reader: RedisCheckpointer, label: str) -> None:
    held = reader.stored_versions(sorted(savers.acknowledged))
    lost = {tid: v for tid, v in savers.acknowledged.items() if held[tid] < v}
    threads = len(savers.acknowledged)
    print(
        f"{label}: handed off {savers.handed_off}, acknowledged {savers.acked_saves} "
        f"(the last of {threads} threads), present {threads - len(lost)}, lost {len(lost)}, "
        f"refused {len(savers.refused)} {sorted(set(savers.refused))}"
    )
    assert lost == {}


def test_a_cluster_primary_killed_loses_no_acknowledged_save(
    own_cluster: Callable[..., RedisClusterTopology],
) -> None:
    cluster = own_cluster()
    namespace = unique_namespace()
    store = RedisCheckpointer.from_url(
        cluster.url, namespace=namespace, replica_acks=1, replica_ack_timeout=0.5, retry=_PATIENT
    )
    reader = RedisCheckpointer.from_url(cluster.url, namespace=namespace, retry=_PATIENT)
    savers = _Savers(store)
    try:
        savers.start()
        _wait_for("saves on every primary", lambda: savers.acknowledged_count() >= 120)
        victim = cluster.primary_for_key(store.keys.index_of(0))
        before = savers.handed_off
        victim.kill()  # SIGKILL by PID
        promoted = cluster.wait_failover(victim)
        assert promoted is not victim
        acked = savers.acked_saves
        victim.start()  # rejoins as a replica of the promoted one: its slots get acks again
        cluster.wait_ready()
        _wait_for(
            "acknowledged saves after the failover",
            lambda: savers.handed_off > before + 100 and savers.acked_saves > acked + 50,
        )
        savers.stop()
        _verify(savers, reader, "cluster failover")
        assert savers.acknowledged
    finally:
        savers.stop()
        store.close()
        reader.close()


def test_the_sentinel_primary_killed_loses_no_acknowledged_save(
    own_sentinel: Callable[..., RedisSentinelTopology],
) -> None:
    group = own_sentinel()
    namespace = unique_namespace()
    store = RedisCheckpointer.from_url(
        group.url(), namespace=namespace, replica_acks=1, replica_ack_timeout=0.5, retry=_PATIENT
    )
    reader = RedisCheckpointer.from_url(group.url(), namespace=namespace, retry=_PATIENT)
    savers = _Savers(store)
    try:
        savers.start()
        _wait_for("saves", lambda: savers.acknowledged_count() >= 80)
        victim = group.primary()
        victim.kill()  # SIGKILL by PID
        promoted = group.wait_failover(victim)
        assert promoted is not victim
        acked = savers.acked_saves
        victim.start()  # rejoins as a replica of the new primary: acks resume
        _wait_for("acknowledged saves on the new primary", lambda: savers.acked_saves > acked + 50)
        savers.stop()
        _verify(savers, reader, "sentinel failover")
    finally:
        savers.stop()
        store.close()
        reader.close()


def test_without_replica_acks_a_failover_loses_what_the_replica_had_not_received(
    own_sentinel: Callable[..., RedisSentinelTopology],
) -> None:
    """The loss ``replica_acks`` exists for, made certain: the replica is cut off, so it
    receives nothing; a save acknowledged meanwhile lives only on the primary, which is then
    SIGKILLed. ``replica_acks=1`` refuses the same save instead of acknowledging it."""
    group = own_sentinel()
    namespace = unique_namespace()
    fast = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.02, deadline=5.0)
    plain = RedisCheckpointer.from_url(group.url(), namespace=namespace, retry=_PATIENT)
    waiting = RedisCheckpointer.from_url(
        group.url(), namespace=namespace, replica_acks=1, replica_ack_timeout=0.2, retry=fast
    )
    try:
        assert waiting.save_state("before", AgentStateSnapshot(), version=1).written
        replica, victim = group.replicas()[0], group.primary()
        # The replica stops (SIGSTOP) and its link is cut, so what the primary writes next
        # reaches no replica (a link left open would deliver it from the socket's buffer).
        replica.pause()
        with victim.client() as admin:
            assert admin.client_kill_filter(_type="replica") == 1
        assert plain.save_state("acknowledged", AgentStateSnapshot(), version=1).written
        with pytest.raises(ReplicaAcksMissing):
            waiting.save_state("refused", AgentStateSnapshot(), version=1)
        victim.kill()  # SIGKILL by PID: what only it held is gone
        replica.resume()
        assert group.wait_failover(victim) is replica
        assert plain.stored_versions(["before", "acknowledged", "refused"]) == {
            "before": 1,  # replica_acks=1 saw it replicated
            "acknowledged": 0,  # acknowledged by replica_acks=0, then lost
            "refused": 0,  # never acknowledged: its caller still holds it
        }
    finally:
        plain.close()
        waiting.close()
