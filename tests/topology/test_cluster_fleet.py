"""A worker fleet storing into a Redis Cluster while the cluster changes under it.

Real ``celery worker`` subprocesses take hand-offs from a private Redis broker (kombu cannot
use a cluster as broker) and store them into a private 3 + 3 cluster with
``replica_acks=1``. Agents hand off 2,400 saves of 400 threads (versions repeat per thread)
through two clients at once, one ``durable`` (``save_state`` returns once the broker has the
save) and one ``buffered`` (batches published in the background), while:

* a primary is SIGKILLed by PID and its replica takes over (the killed node then rejoins as
  a replica, so acknowledged writes can be had again for its slots);
* slots move from primary to primary (``redis-cli --cluster reshard``), round after round
  until they are back where they were, with the keys of one of the namespace's shards in
  them; meanwhile an agent reads through the cluster.

Afterwards every save is reconciled (:mod:`tests.faults.reconcile`): handed off, durable,
superseded, failed to the caller, lost; lost must be 0, and no error may reach the agent.
The thread spread per primary is printed.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import redis
from agents_persistence import PersistenceError, RedisCheckpointer, VersionClock, redis_store
from agents_persistence.config import Settings
from agents_persistence.keys import Keys
from agents_persistence.redis_ops import Asked, Pipeline, follow_ask
from agents_persistence.tasks import CeleryCheckpointer, create_app
from agents_persistence.tasks.broker.redis_transport import INFLIGHT_REGISTRY
from agents_persistence.tasks.devtools.topologies import RedisClusterTopology
from agents_persistence.tasks.worker.app import PersistenceApp
from redis.crc import key_slot

from tests.faults.producers import Stream, thread_ids
from tests.faults.reconcile import (
    Ledger,
    Reconciliation,
    dead_lettered_saves,
    read_dead_letters,
    reconcile,
    write_result,
)
from tests.integration.conftest import WorkerFactory
from tests.support import RedisServer
from tests.support.celery_worker import CeleryWorker, settings_env

pytestmark = [pytest.mark.redis, pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

#: Hand-offs per test, threads they go to, and the agents' overall pace (saves per second).
SAVES = 2400
THREADS = 400
RATE = 160.0
#: A worker's log line of a store call retried (the first try, then tenacity's): the error.
_RETRIED = re.compile(r"(?:transient store error \(|as it raised )(\w+)")
#: Slots one reshard moves: the lowest ones of the primary holding them, among them the slot
#: of the namespace's first shard (the namespace is chosen so).
MOVED_SLOTS = 64

#: Both sides' settings: quick store retries, Celery's retries to ride out a failover.
FLEET_SETTINGS: dict[str, Any] = {
    "replica_acks": 1,
    "replica_ack_timeout_seconds": 0.5,
    "socket_timeout_seconds": 2.0,
    "socket_connect_timeout_seconds": 1.0,
    "retry_attempts": 5,
    "retry_initial_backoff_seconds": 0.05,
    "retry_max_backoff_seconds": 0.5,
    "retry_deadline_seconds": 3.0,
    "task_max_retries": 40,
    "task_retry_backoff_max_seconds": 2.0,
    "task_soft_time_limit_seconds": 20.0,
    "task_time_limit_seconds": 30.0,
    "visibility_timeout_seconds": 10.0,
    "batch_max_snapshots": 50,
    "batch_linger_seconds": 0.05,
    # the clients never re-send: the broker and the workers alone must deliver every save
    "resend_pending_after_seconds": 3600.0,
}


@dataclass
class ClusterFleet:
    """The store on ``cluster``, a private Redis broker, workers and hand-off clients."""

    cluster: RedisClusterTopology
    broker: RedisServer
    settings: Settings
    env: dict[str, str]
    store: RedisCheckpointer
    start_worker: WorkerFactory
    workers: list[CeleryWorker] = field(default_factory=list)
    apps: list[PersistenceApp] = field(default_factory=list)
    clients: list[CeleryCheckpointer] = field(default_factory=list)

    def worker(self) -> CeleryWorker:
        worker = self.start_worker(self.env, concurrency=2)
        self.workers.append(worker)
        return worker

    def client(self, mode: Literal["durable", "buffered"]) -> CeleryCheckpointer:
        app = create_app(self.settings, store=self.store)
        self.apps.append(app)
        client = CeleryCheckpointer(self.store, app, mode=mode)
        self.clients.append(client)
        return client

    def waiting_in_broker(self) -> int:
        """Messages queued, taken but not recorded, or unacknowledged (retries included)."""
        raw = self.broker.client(socket_timeout=10.0)
        try:
            inflight = sum(int(raw.llen(k)) for k in raw.hkeys(INFLIGHT_REGISTRY))
            return int(raw.llen(self.settings.queue)) + inflight + int(raw.hlen("unacked"))
        finally:
            raw.close()

    def await_outcomes(self, ledger: Ledger, timeout: float = 90.0) -> float:
        """Wait until every save ``ledger`` handed off is stored (at its version or a newer
        one) or dead-lettered and the broker holds nothing; the seconds it took. After
        ``timeout`` it returns anyway (reconcile then counts what is missing)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                held = self.store.stored_versions(ledger.thread_ids)
                dead = dead_lettered_saves(read_dead_letters(self.store))
                missing = any(
                    s.error is None
                    and held.get(s.thread_id, 0) < s.version
                    and (s.thread_id, s.version) not in dead
                    for s in ledger.saves
                )
                if not missing and self.waiting_in_broker() == 0:
                    break
            except (PersistenceError, redis.RedisError, OSError):
                pass  # the cluster still settling: look again
            time.sleep(0.25)
        return time.monotonic() - started

    def spread(self, threads: list[str]) -> dict[int, float]:
        """Port of each primary -> its share of ``threads`` (by the slot map now)."""
        owner_of: dict[int, int] = {}
        for port, ranges in self.cluster.slot_ranges().items():
            for start, end in ranges:
                owner_of.update(dict.fromkeys(range(start, end + 1), port))
        owners = Counter(owner_of[key_slot(self.store.keys.thread(t).encode())] for t in threads)
        return {port: count / len(threads) for port, count in sorted(owners.items())}

    def close(self) -> None:
        for worker in reversed(self.workers):
            worker.stop()
        for client in self.clients:
            client.close(timeout=5.0)
        for app in self.apps:
            app.close()
        self.store.close()


def _first_shard_below(slot: int) -> str:
    """A fresh namespace whose first index shard (and its threads) hashes below ``slot``."""
    while True:
        namespace = f"cf-{uuid.uuid4().hex[:8]}"
        if key_slot(Keys(namespace).index_of(0).encode()) < slot:
            return namespace


@pytest.fixture
def cluster_fleet(
    own_cluster: Callable[..., RedisClusterTopology],
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_factory: WorkerFactory,
) -> Iterator[ClusterFleet]:
    cluster = own_cluster()
    broker = redis_server_factory()
    namespace = _first_shard_below(MOVED_SLOTS)
    fields: dict[str, Any] = {
        "redis_url": cluster.url,
        "broker_url": broker.url,
        "namespace": namespace,
        "queue": f"cluster-fleet-{namespace}",
        **FLEET_SETTINGS,
    }
    settings = Settings(_env_file=None, **fields)
    fleet = ClusterFleet(
        cluster=cluster,
        broker=broker,
        settings=settings,
        env=settings_env(**fields),
        store=RedisCheckpointer.from_settings(settings),
        start_worker=celery_worker_factory,
    )
    try:
        yield fleet
    finally:
        fleet.close()


@dataclass
class Agents:
    """Two streams of hand-offs into one ledger: a durable client and a buffered one."""

    fleet: ClusterFleet
    threads: list[str]
    ledger: Ledger = field(default_factory=Ledger)
    streams: list[Stream] = field(default_factory=list)

    def start(self) -> Agents:
        clock = VersionClock()
        modes: tuple[Literal["durable", "buffered"], ...] = ("durable", "buffered")
        for mode in modes:
            stream = Stream(
                self.fleet.client(mode), self.ledger, self.threads, total=SAVES // 2,
                producers=2, rate=RATE / 2, clock=clock,
            )  # fmt: skip
            self.streams.append(stream.start())
        return self

    def wait_for(self, attempted: int) -> None:
        self.streams[0].wait_for(attempted, timeout=60.0)  # the ledger is shared

    def finish(self) -> None:
        """Let every producer finish, then publish what the buffered client still holds."""
        for stream in self.streams:
            stream.join(120.0)
        for client in self.fleet.clients:
            client.publish_buffered(60.0)


def _report(
    fault: str,
    agents: Agents,
    fleet: ClusterFleet,
    capsys: pytest.CaptureFixture[str],
    **extra: Any,
) -> Reconciliation:
    result = reconcile(fault, agents.ledger, fleet.store)
    result.extra.update(extra)
    # what the workers rode out: store calls retried (by error), tasks retried by Celery
    retried = Counter(m for w in fleet.workers for m in _RETRIED.findall(w.log_text()))
    result.extra["worker_store_retries"] = ",".join(f"{k}:{n}" for k, n in sorted(retried.items()))
    result.extra["task_retries"] = sum(w.log_count("retry: Retry in") for w in fleet.workers)
    spread = fleet.spread(agents.threads)
    result.extra["spread"] = ",".join(f"{port}:{share:.0%}" for port, share in spread.items())
    write_result(result)
    with capsys.disabled():
        print(f"\n{result.line()}")
    # Every save has one outcome, and none reached the agent as an error or was set aside.
    assert result.handed_off + result.failed == SAVES
    assert result.handed_off == result.durable + result.superseded + result.dead_lettered
    result.assert_clean()
    assert result.failed == 0, result.line()
    assert result.dead_lettered == 0, result.line()
    assert result.durable == result.threads, result.line()  # each thread's newest save
    assert len(spread) == 3, spread
    assert all(0.20 <= s <= 0.46 for s in spread.values()), spread
    return result


def test_a_primary_sigkilled_under_a_worker_fleet_loses_nothing(
    cluster_fleet: ClusterFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet, cluster = cluster_fleet, cluster_fleet.cluster
    fleet.worker()
    fleet.worker()
    agents = Agents(fleet, thread_ids("agent", THREADS)).start()
    agents.wait_for(SAVES // 4)
    victim = cluster.primary_for_key(fleet.store.keys.index_of(0))
    killed_at = time.monotonic()
    victim.kill()  # SIGKILL by PID
    promoted = cluster.wait_failover(victim)
    failover = time.monotonic() - killed_at
    assert promoted is not victim
    assert promoted in cluster.primaries_now()
    victim.start()  # rejoins as the promoted node's replica: its slots get acks again
    cluster.wait_ready()
    agents.finish()
    settled = fleet.await_outcomes(agents.ledger)
    result = _report(
        "cluster: a primary SIGKILLed under a worker fleet", agents, fleet, capsys,
        failover_s=round(failover, 1), settled_s=round(settled, 1),
    )  # fmt: skip
    assert victim not in cluster.primaries_now()
    assert result.handed_off >= 2000


def test_slots_moving_under_a_worker_fleet_lose_nothing_and_the_agent_sees_no_error(
    cluster_fleet: ClusterFleet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet, cluster, store = cluster_fleet, cluster_fleet.cluster, cluster_fleet.store
    asks: list[Asked] = []  # in this process (the agent's reads): ASK answers followed

    def follow(request: Pipeline, replies: list[Any]) -> Asked | None:
        asked = follow_ask(request, replies)
        if asked is not None:
            asks.append(asked)
        return asked

    monkeypatch.setattr(redis_store, "follow_ask", follow)
    fleet.worker()
    fleet.worker()
    agents = Agents(fleet, thread_ids("agent", THREADS)).start()
    reader = _Reader(RedisCheckpointer.from_settings(fleet.settings), agents.threads).start()
    agents.wait_for(SAVES // 10)
    first_shard = key_slot(store.keys.index_of(0).encode())
    assert first_shard < MOVED_SLOTS
    before = cluster.slot_ranges()
    cycle = sorted(cluster.primaries_now(), key=lambda p: p is not cluster.slot_owner(0))
    moves, moving_at, after_first_round = 0, time.monotonic(), 0
    # Round after round while the agents hand off, the lowest slots (the namespace's first
    # shard among them) go from primary to primary and back where they were.
    while moves == 0 or (len(agents.ledger) < SAVES * 0.9 and moves < 5 * len(cycle)):
        for holder, target in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            cluster.reshard(holder, target, slots=MOVED_SLOTS)
            assert cluster.slot_owner(first_shard) is target
            moves += 1
        after_first_round = after_first_round or len(agents.ledger)
    resharding = time.monotonic() - moving_at
    reader_reads = reader.stop()
    agents.finish()
    settled = fleet.await_outcomes(agents.ledger)
    _report(
        "cluster: slots resharded round the primaries under a worker fleet", agents, fleet,
        capsys, reshards=moves, reshard_s=round(resharding, 1), settled_s=round(settled, 1),
        agent_reads=reader_reads, agent_asks_followed=len(asks),
    )  # fmt: skip
    assert cluster.slot_ranges() == before
    assert reader.errors == [], reader.errors[:5]
    assert reader_reads > 0
    assert after_first_round < SAVES  # a whole round of moves while the agents handed off


@dataclass
class _Reader:
    """An agent reading through the cluster while slots move: loads, and a listing page."""

    store: RedisCheckpointer
    threads: list[str]
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> _Reader:
        self._thread = threading.Thread(target=self._run, name="agent-reader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            try:
                self.store.load_checkpoint(rng.choice(self.threads))
                self.store.stored_versions(rng.sample(self.threads, 20))
                next(iter(self.store.iter_threads(page_size=100)), None)
            except Exception as exc:  # what would reach the agent
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.reads += 1

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        assert not self._thread.is_alive()
        self.store.close()
        return self.reads
