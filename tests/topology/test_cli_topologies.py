"""The operator tools on a Redis Cluster and a Sentinel group, with passwords and ACL users:
``agents-persistence`` (list, show, delete, cleanup, stats, dead-letters, doctor) and the demo
run as subprocesses, and a real ``celery worker`` + ``celery beat`` store hand-offs and run the
cleanup, all given ``redis+cluster://`` / ``redis+sentinel://`` store URLs. No password ever
appears in what they print or log.

One private topology of each kind serves the whole module (with a ``requirepass`` password
and an ACL user on every data node); each test works in a namespace of its own. The broker is
RabbitMQ (kombu cannot use a Redis Cluster as a broker).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from agents_persistence import AgentStateSnapshot, RedisCheckpointer, TodoItem
from agents_persistence.config.settings import Settings
from agents_persistence.tasks.client.checkpointer import CeleryCheckpointer
from agents_persistence.tasks.devtools.redis_server import RedisServer
from agents_persistence.tasks.devtools.topologies import (
    RedisClusterTopology,
    RedisSentinelTopology,
    TopologyError,
)
from agents_persistence.tasks.protocol.names import CLEANUP_TASK, SAVE_TASK
from agents_persistence.tasks.worker.dead_letters import DeadLetters, make_entry

from tests.integration.conftest import RABBITMQ_URL, _tcp_open, delete_amqp_queue
from tests.integration.test_cli import Result, run
from tests.support import skip_or_fail
from tests.support.celery_worker import CeleryBeat, CeleryWorker, settings_env
from tests.support.namespaces import unique_namespace
from tests.support.topologies import require_topology_binaries

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.rabbitmq]

PREFIX = "AGENTS_PERSISTENCE_"
#: The default user's password (``requirepass``) of every data node.
PASSWORD = "Topo-cli-PW-5e1f0c"
#: An ACL user of every data node, and its password.
ACL_USER, ACL_PASSWORD = "agent-tools", "acl-Tools-pw-9d27b4"
SECRETS = (PASSWORD, ACL_PASSWORD)


@dataclass
class Topology:
    """A running topology as the tools see it: its URLs and its data nodes."""

    kind: str
    password_url: str  # the default user, by password
    acl_url: str  # the ACL user
    data_nodes: list[RedisServer]

    def hosts(self) -> str:
        """The hosts part of the URLs (what a redacted URL still shows)."""
        return self.acl_url.split("@", 1)[1]


def _add_acl_user(nodes: list[RedisServer]) -> None:
    for node in nodes:
        client = redis.Redis(host=node.host, port=node.port, password=PASSWORD)
        try:
            client.acl_setuser(
                ACL_USER,
                enabled=True,
                passwords=[f"+{ACL_PASSWORD}"],
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )
        finally:
            client.close()


def _start(topology: RedisClusterTopology | RedisSentinelTopology) -> None:
    try:
        topology.start()
    except TopologyError as exc:
        topology.close()
        pytest.fail(f"could not start a private topology: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Topology]:
    require_topology_binaries()
    topology = RedisClusterTopology(password=PASSWORD)
    _start(topology)
    try:
        _add_acl_user(topology.nodes)
        seeds = topology.url.split("@", 1)[1]
        yield Topology(
            "cluster",
            topology.url,
            f"redis+cluster://{ACL_USER}:{ACL_PASSWORD}@{seeds}",
            topology.nodes,
        )
    finally:
        topology.close()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Topology]:
    require_topology_binaries()
    topology = RedisSentinelTopology(password=PASSWORD)
    _start(topology)
    try:
        _add_acl_user(topology.data_nodes)
        rest = topology.url().split("@", 1)[1]
        yield Topology(
            "sentinel",
            topology.url(),
            f"redis+sentinel://{ACL_USER}:{ACL_PASSWORD}@{rest}",
            topology.data_nodes,
        )
    finally:
        topology.close()


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Topology:
    found: Topology = request.getfixturevalue(request.param)
    return found


@pytest.fixture(scope="module")
def broker() -> str:
    if not _tcp_open(RABBITMQ_URL):
        skip_or_fail(f"no RabbitMQ at {RABBITMQ_URL}")
    return RABBITMQ_URL


@pytest.fixture
def namespace(topology: Topology) -> Iterator[str]:
    """A namespace of this test's own; its keys go afterwards."""
    name = unique_namespace("cli")
    yield name
    store = RedisCheckpointer.from_url(topology.password_url, namespace=name)
    try:
        store.drop_namespace()
    finally:
        store.close()


def _env(url: str, namespace: str, **more: str) -> dict[str, str]:
    return {
        f"{PREFIX}REDIS_URL": url,
        f"{PREFIX}NAMESPACE": namespace,
        f"{PREFIX}BROKER_URL": RABBITMQ_URL,
        "COLUMNS": "300",
        **more,
    }


def _cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120.0) -> Result:
    """The console script; whatever it printed holds no password."""
    result = run(*args, env=env, cwd=cwd, timeout=timeout)
    for secret in SECRETS:
        assert secret not in result.both, (args, result.both)
    return result


def _state(n: int) -> AgentStateSnapshot:
    return AgentStateSnapshot(
        todos=[TodoItem.pending(f"task {n}")], files={"notes.md": "x" * n}, scratchpad={"n": n}
    )


def _namespace_keys(topology: Topology, namespace: str) -> int:
    """Keys of ``namespace`` counted on every data node that is a primary (by SCAN)."""
    total = 0
    for node in topology.data_nodes:
        client = redis.Redis(host=node.host, port=node.port, password=PASSWORD)
        try:
            if client.info("replication")["role"] != "master":
                continue
            total += sum(1 for _ in client.scan_iter(match=f"{namespace}:*", count=1000))
        finally:
            client.close()
    return total


def _row(table: str, name: str) -> str:
    """The value of row ``name`` of a printed ``stats`` table."""
    found = re.search(rf"{re.escape(name)}\s+│\s+(.+?)\s+│", table)
    assert found is not None, (name, table)
    return found.group(1)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the operator commands ------------------------------------------------------------------------
def test_threads_list_show_delete_stats_and_cleanup(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    env = _env(topology.acl_url, namespace)
    store = RedisCheckpointer.from_url(topology.acl_url, namespace=namespace)
    short = RedisCheckpointer.from_url(topology.acl_url, namespace=namespace, ttl=0.2)
    try:
        threads = [f"agent-{i:02d}" for i in range(40)]
        for i, tid in enumerate(threads):
            store.save_state(tid, _state(i), version=100 + i)
        expiring = [f"brief-{i}" for i in range(7)]
        for tid in expiring:
            short.save_state(tid, _state(1))
        _wait(lambda: store.count_threads() == (40, 7), 10, "7 expired threads")

        listed = _cli(env, tmp_path, "list", "--limit", "0", "--page-size", "9")
        assert listed.code == 0, listed.both
        assert sorted(listed.out.split()) == threads
        assert f"40 thread(s) in namespace {namespace}" in listed.err

        shown = _cli(env, tmp_path, "show", "agent-07")
        assert shown.code == 0, shown.both
        head, _, body = shown.out.partition("{")
        assert "version:   107" in head
        assert json.loads("{" + body) == _state(7).model_dump(mode="json")

        deleted = _cli(env, tmp_path, "delete", "agent-07")
        assert deleted.code == 0, deleted.both
        assert "tombstone" in deleted.out
        assert store.load_state("agent-07") is None
        gone = _cli(env, tmp_path, "show", "agent-07")
        assert gone.code == 1
        assert gone.err.startswith("error: no live state for thread 'agent-07'")

        stats = _cli(env, tmp_path, "stats")
        assert stats.code == 0, stats.both
        assert _row(stats.out, "live threads") == "39"
        assert _row(stats.out, "expired, not yet cleaned") == "7"
        # every key of the namespace, on every primary
        assert _row(stats.out, "keys in namespace") == str(_namespace_keys(topology, namespace))
        assert _row(stats.out, "store") == topology.acl_url.replace(ACL_PASSWORD, "***")
        assert _row(stats.out, "maxmemory-policy") == "noeviction"
        if topology.kind == "cluster":
            assert _row(stats.out, "primaries") == "3"
            assert re.fullmatch(
                r"[\d.]+M on 3 primaries \(largest [\d.]+M\)", _row(stats.out, "redis memory")
            )

        cleaned = _cli(env, tmp_path, "cleanup")
        assert cleaned.code == 0, cleaned.both
        assert cleaned.out.startswith(
            f"removed 7 expired index entries from namespace {namespace}"
        )
        assert store.count_threads() == (39, 0)
    finally:
        store.close()
        short.close()


def test_dead_letters_on_the_topology(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    env = _env(topology.acl_url, namespace)
    store = RedisCheckpointer.from_url(topology.acl_url, namespace=namespace)
    try:
        letters = DeadLetters(store.dead_letter_list(100))
        entries = [
            make_entry(f"store down {i}", "StoreUnavailable", task=SAVE_TASK, args=[], kwargs={})
            for i in range(3)
        ]
        for entry in entries:
            letters.push(entry)

        listed = _cli(env, tmp_path, "dead-letters", "list", "--json")
        assert listed.code == 0, listed.both
        assert [e["id"] for e in json.loads(listed.out)] == [e["id"] for e in reversed(entries)]

        stats = _cli(env, tmp_path, "stats")
        assert _row(stats.out, "dead letters") == "3"

        purged = _cli(env, tmp_path, "dead-letters", "purge", "--yes")
        assert purged.code == 0, purged.both
        assert purged.out.strip() == "purged 3 dead letter(s)"
        assert letters.count() == 0
    finally:
        store.close()


def test_the_password_of_the_default_user_works_too(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    store = RedisCheckpointer.from_url(topology.acl_url, namespace=namespace)
    try:
        store.save_state("by-acl-user", _state(3), version=3)
    finally:
        store.close()
    listed = _cli(_env(topology.password_url, namespace), tmp_path, "list")
    assert listed.code == 0, listed.both
    assert listed.out.split() == ["by-acl-user"]


def test_a_wrong_password_fails_cleanly_without_printing_it(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    wrong = topology.acl_url.replace(ACL_PASSWORD, "Wrong-pw-" + ACL_PASSWORD[::-1])
    env = _env(wrong, namespace, **{f"{PREFIX}RETRY_DEADLINE_SECONDS": "1"})
    result = run("list", env=env, cwd=tmp_path, timeout=120)
    assert result.code == 1
    assert result.err.startswith("error: "), result.err
    assert "invalid settings" not in result.err
    assert re.search(r"auth|password|WRONGPASS", result.err, re.IGNORECASE), result.err
    assert "Wrong-pw-" not in result.both
    for secret in SECRETS:
        assert secret not in result.both


# -- doctor ---------------------------------------------------------------------------------------
def _doctor_lines(result: Result) -> dict[str, str]:
    found = {}
    for line in result.out.splitlines():
        for mark in ("ok", "FAIL"):
            if line.startswith(mark + " "):
                found[line[len(mark) :].strip().split(":", 1)[0]] = line
    return found


def test_doctor_reads_every_primary(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    env = _env(topology.acl_url, namespace)
    result = _cli(env, tmp_path, "doctor", "--timeout", "1")
    found = _doctor_lines(result)
    assert found["store reachable"].startswith("ok"), result.out
    assert topology.hosts() in found["store reachable"]
    assert found["maxmemory-policy"].startswith("ok"), result.out
    assert found["persistence"].startswith("ok"), result.out  # every primary has a replica
    assert found["broker reachable"].startswith("ok"), result.out
    assert found["workers"].startswith("FAIL")  # none started here
    assert result.code == 1
    if topology.kind == "cluster":
        assert "(each of 3 primaries)" in found["maxmemory-policy"]
        assert "1 connected replica(s) (each of 3 primaries)" in found["persistence"]


def test_doctor_names_the_one_misconfigured_primary_of_a_cluster(
    cluster: Topology, broker: str, tmp_path: Path
) -> None:
    primaries = []
    for node in cluster.data_nodes:
        client = redis.Redis(host=node.host, port=node.port, password=PASSWORD)
        if client.info("replication")["role"] == "master":
            primaries.append((node, client))
        else:
            client.close()
    assert len(primaries) == 3
    odd, odd_client = primaries[-1]
    odd_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = _cli(_env(cluster.acl_url, unique_namespace("cli")), tmp_path, "doctor")
    finally:
        odd_client.config_set("maxmemory-policy", "noeviction")
        for _, client in primaries:
            client.close()
    line = _doctor_lines(result)["maxmemory-policy"]
    assert line.startswith("FAIL"), result.out
    assert f"{odd.host}:{odd.port}: allkeys-lru" in line
    others = [node for node, _ in primaries[:-1]]
    assert all(f"{n.host}:{n.port}: noeviction" in line for n in others), line
    assert "on every primary of a cluster" in result.out


# -- the demo, workers and beat -------------------------------------------------------------------
def test_the_demo_runs_on_the_topology(topology: Topology, broker: str, tmp_path: Path) -> None:
    env = {f"{PREFIX}BROKER_URL": RABBITMQ_URL, "COLUMNS": "300"}
    result = _cli(
        env,
        tmp_path,
        "demo",
        "--redis-url",
        topology.acl_url,
        "--agents",
        "4",
        "--steps",
        "5",
        "--concurrency",
        "1",
        timeout=240,
    )
    assert result.code == 0, result.both
    assert "Verified OK" in result.out, result.out
    assert topology.acl_url.replace(ACL_PASSWORD, "***") in result.out


def test_a_worker_and_beat_store_and_clean_up(
    topology: Topology, namespace: str, broker: str, tmp_path: Path
) -> None:
    queue = f"t-{namespace}"
    env = settings_env(
        redis_url=topology.acl_url,
        broker_url=RABBITMQ_URL,
        namespace=namespace,
        queue=queue,
        ttl_seconds=1.0,
        cleanup_interval_seconds=1,
    )
    worker = CeleryWorker(env, directory=tmp_path, concurrency=1)
    beat = CeleryBeat(env, directory=tmp_path)
    store = RedisCheckpointer.from_url(topology.acl_url, namespace=namespace)
    try:
        worker.start()
        settings = Settings(
            _env_file=None,
            redis_url=topology.acl_url,
            broker_url=RABBITMQ_URL,
            namespace=namespace,
            queue=queue,
            ttl_seconds=1.0,
        )
        client = CeleryCheckpointer.from_settings(settings, mode="durable")
        threads = [f"handed-{i:02d}" for i in range(12)]
        try:
            for tid in threads:
                client.save_state(tid, _state(2), version=2)
            client.flush(timeout=60)
        finally:
            client.close()
        worker.wait_for_tasks(SAVE_TASK, 1, timeout=60)
        # stored by the worker, then expired (ttl 1 s): in the index, not yet cleaned
        _wait(lambda: store.count_threads() == (0, 12), 30, "12 expired hand-offs")

        beat.start()
        _wait(lambda: store.count_threads() == (0, 0), 60, "beat's cleanup to remove them")
        assert beat.sent_count(CLEANUP_TASK) >= 1
        worker.wait_for_log("'removed': 12", timeout=30)
    finally:
        beat.stop()
        worker.stop()
        store.close()
        delete_amqp_queue(RABBITMQ_URL, queue)
    for process in (worker, beat):
        text = process.log_tail(100000)
        for secret in SECRETS:
            assert secret not in text, process.name
