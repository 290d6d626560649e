"""Private Redis topologies for scale and failover tests: a Redis Cluster and a Sentinel group.

Every node is a :class:`~agents_persistence.tasks.devtools.redis_server.RedisServer` (its own
process, port and temp dir, ended by PID); nothing is looked up or signalled by name.

:class:`RedisClusterTopology`
    ``primaries`` primaries and as many replicas each (default 3 + 3), started with
    ``--cluster-enabled yes`` and joined by ``redis-cli --cluster create ... --cluster-replicas``.
    A node's cluster bus listens on its port + 10000, so every port is chosen below 55535 with
    both it and its bus port free. Ready once every node says ``cluster_state:ok``, knows every
    other node, and every replica's link to its primary is up.
:class:`RedisSentinelTopology`
    A primary, a replica and three sentinels (``redis-server sentinel.conf --sentinel``)
    monitoring it under one service name. Ready once every sentinel names the primary and
    knows the replica and the other sentinels.

::

    with RedisClusterTopology() as cluster:
        store = RedisCheckpointer.from_url(cluster.url, namespace="ns")
        cluster.primary_for_key("ns:...").kill()   # SIGKILL by PID; a replica takes over
        cluster.wait_ready()
        cluster.reshard(source, target, slots=2048)  # slots (and keys) move while clients run
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from agents_persistence.tasks.devtools.binaries import find_redis_server
from agents_persistence.tasks.devtools.redis_server import RedisServer, RedisServerError
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

__all__ = [
    "BUS_PORT_OFFSET",
    "RedisClusterTopology",
    "RedisSentinelTopology",
    "TopologyError",
    "cluster_port",
    "find_redis_cli",
]

#: A cluster node's bus port is its port + this.
BUS_PORT_OFFSET = 10000
_PORT_RANGE = (20000, 55535 - 1)


class TopologyError(RedisServerError):
    """A topology could not be started or did not become ready (the message says why)."""


def find_redis_cli(server_binary: str | None = None) -> str | None:
    """``redis-cli`` beside ``server_binary`` (default: the ``redis-server`` found), or on PATH."""
    import shutil

    binary = server_binary or find_redis_server()
    if binary is not None:
        beside = Path(binary).with_name("redis-cli")
        if beside.is_file():
            return str(beside)
    return shutil.which("redis-cli")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int] | None = None) -> int:
    """A free port below 55535 whose bus port (+10000) is free too, not in ``taken``."""
    taken = taken if taken is not None else set()
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(*_PORT_RANGE)
        if port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise TopologyError("no free port pair (port, port + 10000) below 55535")


def _wait(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if check():
                return
            last = None
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise TopologyError(f"timed out after {timeout}s waiting for {what}{why}")
        time.sleep(poll)


def _probe(server: RedisServer, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=server.host,
        port=server.port,
        password=password,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


def _fields(reply: Any) -> dict[str, Any]:
    """A ``SENTINEL MASTER`` reply as a dict (redis-py parses it; raw it is a flat list)."""
    if isinstance(reply, dict):
        return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in reply.items()}
    items = [x.decode() if isinstance(x, bytes) else x for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


class _Topology:
    """Shared lifecycle: start everything or nothing, close by PID, context manager."""

    def __init__(self, *, password: str | None, ready_timeout: float) -> None:
        self.password = password
        self.ready_timeout = ready_timeout
        self.binary = find_redis_server()
        if self.binary is None:
            raise TopologyError("no redis-server binary on PATH (or in $REDIS_SERVER)")
        self._closed = False

    @property
    def servers(self) -> list[RedisServer]:
        raise NotImplementedError

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        """Kill every process by PID and remove the temp dirs. Idempotent."""
        self._closed = True
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _auth_args(self) -> list[str]:
        if self.password is None:
            return []
        return ["--requirepass", self.password, "--masterauth", self.password]


# -- Redis Cluster --------------------------------------------------------------------------------
class RedisClusterTopology(_Topology):
    """A private Redis Cluster: ``primaries`` primaries with ``replicas`` replicas each.

    Args:
        primaries: how many primaries (at least 3, as ``redis-cli --cluster create`` needs).
        replicas: replicas per primary.
        password: ``requirepass`` (and ``masterauth``) of every node; :attr:`url` carries it.
        node_timeout_ms: ``cluster-node-timeout``: how long a silent primary takes to be
            failed over (kept above what a loaded machine's pauses reach).
        appendonly: AOF on every node (``appendfsync always``).
        ready_timeout: seconds to wait for the cluster to form (or re-form).
    """

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 1,
        password: str | None = None,
        node_timeout_ms: int = 3000,
        appendonly: bool = False,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(password=password, ready_timeout=ready_timeout)
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.primaries, self.replicas = primaries, replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        cli = find_redis_cli(self.binary)
        if cli is None:
            raise TopologyError("no redis-cli beside redis-server or on PATH")
        self.cli: str = cli
        self.nodes: list[RedisServer] = []

    @property
    def servers(self) -> list[RedisServer]:
        return list(self.nodes)

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port,host:port,...`` seeded from every node."""
        auth = f":{self.password}@" if self.password is not None else ""
        seeds = ",".join(f"{n.host}:{n.port}" for n in self.nodes if n.running)
        return f"redis+cluster://{auth}{seeds}"

    def start(self) -> Self:
        """Start every node, create the cluster and wait until it is ready."""
        taken: set[int] = set()
        total = self.primaries * (1 + self.replicas)
        for _ in range(total):
            port = cluster_port(taken)
            taken |= {port, port + BUS_PORT_OFFSET}
            node = RedisServer(
                port=port,
                appendonly=self.appendonly,
                requirepass=self.password,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    # a primary's replica may be promoted however long it was cut off
                    "--cluster-replica-validity-factor", "0",
                    *(["--masterauth", self.password] if self.password else []),
                ],
                binary=self.binary,
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        argv = [self.cli, "--cluster", "create"]
        argv += [f"{n.host}:{n.port}" for n in self.nodes]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=self.ready_timeout,
            env=self._cli_env(),
            check=False,
        )
        if done.returncode != 0:
            raise TopologyError(
                f"redis-cli --cluster create exited with {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        self.wait_ready()
        return self

    # -- facts ----------------------------------------------------------------------------------
    def _running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def _query(self, node: RedisServer, *args: Any) -> Any:
        client = _probe(node, self.password)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def role_of(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node itself says."""
        role = self._query(node, "ROLE")
        return role[0].decode() if isinstance(role[0], bytes) else str(role[0])

    def primaries_now(self) -> list[RedisServer]:
        """The running nodes that are primaries right now."""
        return [n for n in self._running() if self.role_of(n) == "master"]

    def slot_owner(self, slot: int) -> RedisServer:
        """The running primary serving ``slot``, as the running nodes' slot map says."""
        for node in self._running():
            with contextlib.suppress(redis.RedisError):
                for start, end, primary, *_ in self._query(node, "CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(primary[1])
                        for candidate in self.nodes:
                            if candidate.port == port and candidate.running:
                                return candidate
        raise TopologyError(f"no running primary serves slot {slot}")

    def primary_for_key(self, key: str | bytes) -> RedisServer:
        """The running primary holding ``key``'s slot."""
        return self.slot_owner(key_slot(key.encode() if isinstance(key, str) else key))

    def slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each primary -> the slot ranges it serves."""
        owners: dict[int, list[tuple[int, int]]] = {}
        node = self._running()[0]
        for start, end, primary, *_ in self._query(node, "CLUSTER", "SLOTS"):
            owners.setdefault(int(primary[1]), []).append((int(start), int(end)))
        return owners

    def node_id(self, node: RedisServer) -> str:
        """``node``'s cluster id (``CLUSTER MYID``)."""
        raw = self._query(node, "CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    # -- changes --------------------------------------------------------------------------------
    def reshard(
        self, source: RedisServer, target: RedisServer, slots: int, timeout: float = 120.0
    ) -> None:
        """Move ``slots`` slots (with their keys) from primary ``source`` to primary ``target``
        while clients keep going: ``redis-cli --cluster reshard ... --cluster-yes``, which
        takes ``source``'s lowest slots one at a time (``SETSLOT IMPORTING/MIGRATING``,
        ``MIGRATE`` of the keys, ``SETSLOT NODE``); returns once every node agrees again."""
        argv = [
            self.cli, "--cluster", "reshard", f"{source.host}:{source.port}",
            "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
            "--cluster-slots", str(slots), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._cli_env(),
            check=False,
        )
        if done.returncode != 0:
            raise TopologyError(
                f"redis-cli --cluster reshard exited with {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        self.wait_ready(timeout, replicas_linked=False)

    def _cli_env(self) -> dict[str, str] | None:
        """``redis-cli``'s environment: the password in ``REDISCLI_AUTH``, never in argv."""
        if self.password is None:
            return None
        import os

        return {**os.environ, "REDISCLI_AUTH": self.password}

    # -- readiness ------------------------------------------------------------------------------
    def _node_ready(self, node: RedisServer, expected_nodes: int) -> bool:
        raw = self._query(node, "CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        info = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == "16384"
            and int(info.get("cluster_known_nodes", "0")) >= expected_nodes
        )

    def _replicas_linked(self) -> bool:
        linked: dict[int, int] = {}
        for node in self._running():
            client = _probe(node, self.password)
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave":
                if info.get("master_link_status") != "up":
                    return False
                linked[int(info["master_port"])] = linked.get(int(info["master_port"]), 0) + 1
        primaries = self.primaries_now()
        if len(primaries) != self.primaries:
            return False
        if self.replicas == 0:
            return True
        # linked, and acknowledging: a fresh link answers WAIT only after its first ack
        return all(
            linked.get(p.port, 0) >= 1 and int(self._query(p, "WAIT", 1, 100)) >= 1
            for p in primaries
        )

    def wait_ready(self, timeout: float | None = None, *, replicas_linked: bool = True) -> None:
        """Wait until every running node says ``cluster_state:ok`` with all slots assigned,
        ``primaries`` primaries answer, and (``replicas_linked``) each has a linked replica."""
        running = self._running()

        def ready() -> bool:
            if not all(self._node_ready(n, len(self.nodes)) for n in running):
                return False
            if replicas_linked:
                return self._replicas_linked()
            return len(self.primaries_now()) == self.primaries

        _wait("the cluster to be ready", ready, timeout or self.ready_timeout)

    def wait_failover(self, killed: RedisServer, timeout: float | None = None) -> RedisServer:
        """After ``killed`` (a primary) died: wait until a replica took its slots and every
        running node says ``cluster_state:ok``; return the new primary."""
        slots = [start for start, _ in self.slot_ranges().get(killed.port, [])] or [0]

        def promoted() -> bool:
            try:
                owner = self.slot_owner(slots[0])
            except TopologyError:  # the slot map still names the dead node
                return False
            return owner is not killed and owner.running and self.role_of(owner) == "master"

        _wait(f"a replica of port {killed.port} to take over", promoted, timeout or 60.0)
        self.wait_ready(timeout, replicas_linked=False)
        return self.slot_owner(slots[0])

    def __repr__(self) -> str:
        ports = [n.port for n in self.nodes]
        return f"RedisClusterTopology(ports={ports})"


# -- Sentinel -------------------------------------------------------------------------------------
class _SentinelServer(RedisServer):
    """A ``redis-server sentinel.conf --sentinel`` process (config written at first start)."""

    def __init__(self, *, monitor: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._monitor = monitor

    def _argv(self) -> list[str]:
        conf = self.directory / "sentinel.conf"
        if not conf.exists():  # sentinel rewrites its own config: write it once
            conf.write_text(
                f"port {self.port}\nbind {self.host}\ndaemonize no\n"
                f"dir {self.directory}\nlogfile {self.log_path}\n{self._monitor}",
                "utf-8",
            )
        return [self.binary, str(conf), "--sentinel"]


class RedisSentinelTopology(_Topology):
    """A private primary, its replica and three sentinels monitoring them as ``service``.

    Args:
        service: the name the sentinels know the primary by.
        password: ``requirepass``/``masterauth`` of the data nodes (the sentinels have none,
            and are told the data nodes' with ``sentinel auth-pass``).
        down_after_ms: ``down-after-milliseconds``: silence before a primary is down.
        appendonly: AOF on the data nodes.
        ready_timeout: seconds to wait for the group to form (or re-form).
    """

    def __init__(
        self,
        *,
        service: str = "mymaster",
        sentinels: int = 3,
        password: str | None = None,
        down_after_ms: int = 3000,
        appendonly: bool = False,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(password=password, ready_timeout=ready_timeout)
        self.service = service
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.appendonly = appendonly
        self.data_nodes: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [*self.sentinels, *self.data_nodes]

    def url(self, db: int = 0) -> str:
        """``redis+sentinel://[:password@]host:port,.../<service>/<db>`` over the sentinels."""
        auth = f":{self.password}@" if self.password is not None else ""
        seeds = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{auth}{seeds}/{self.service}/{db}"

    def start(self) -> Self:
        """Start the primary, its replica, the sentinels; wait until all agree."""
        primary = RedisServer(
            appendonly=self.appendonly,
            requirepass=self.password,
            extra_args=self._auth_args()[2:],
            binary=self.binary,
        )
        self.data_nodes.append(primary)
        primary.start()
        replica = RedisServer(
            appendonly=self.appendonly,
            requirepass=self.password,
            extra_args=[*self._auth_args()[2:], "--replicaof", primary.host, str(primary.port)],
            binary=self.binary,
        )
        self.data_nodes.append(replica)
        replica.start()
        quorum = self.sentinel_count // 2 + 1
        monitor = (
            f"sentinel monitor {self.service} {primary.host} {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} 10000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        if self.password is not None:
            monitor += f"sentinel auth-pass {self.service} {self.password}\n"
        for _ in range(self.sentinel_count):
            sentinel = _SentinelServer(monitor=monitor, binary=self.binary)
            self.sentinels.append(sentinel)
            sentinel.start()
        self.wait_ready()
        return self

    # -- facts ----------------------------------------------------------------------------------
    def _sentinel(self, server: RedisServer, *args: Any) -> Any:
        client = _probe(server, None)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def primary(self) -> RedisServer:
        """The data node the first answering sentinel names as primary."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with contextlib.suppress(redis.RedisError):
                _host, port = self._sentinel(
                    sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
                for node in self.data_nodes:
                    if node.port == int(port):
                        return node
        raise TopologyError("no sentinel names a primary")

    def replicas(self) -> list[RedisServer]:
        """The running data nodes other than the primary."""
        primary = self.primary()
        return [n for n in self.data_nodes if n is not primary and n.running]

    def _agreed(self, primary: RedisServer, need_replica: bool) -> bool:
        for sentinel in self.sentinels:
            _host, port = self._sentinel(
                sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
            )
            if int(port) != primary.port:
                return False
            info = self._sentinel(sentinel, "SENTINEL", "MASTER", self.service)
            fields = _fields(info)
            if int(fields.get("num-other-sentinels", 0)) < self.sentinel_count - 1:
                return False
            if need_replica and int(fields.get("num-slaves", 0)) < 1:
                return False
        client = _probe(primary, self.password)
        try:
            info = client.info("replication")
            if info.get("role") != "master":
                return False
            if not need_replica:
                return True
            # linked, and acknowledging: a fresh link answers WAIT only after its first ack
            return int(info.get("connected_slaves", 0)) >= 1 and int(client.wait(1, 100)) >= 1
        finally:
            client.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every sentinel names the same running primary, knows the other
        sentinels and a replica, and the primary has a linked replica."""
        _wait(
            "the sentinels to agree",
            lambda: self._agreed(self.primary(), need_replica=True),
            timeout or self.ready_timeout,
        )

    def wait_failover(self, killed: RedisServer, timeout: float | None = None) -> RedisServer:
        """After ``killed`` (the primary) died: wait until every sentinel names another
        running node as primary and it says it is one; return it."""
        found: list[RedisServer] = []

        def moved() -> bool:
            primary = self.primary()
            if primary is killed or not primary.running:
                return False
            if not self._agreed(primary, need_replica=False):
                return False
            found[:] = [primary]
            return True

        _wait(f"the sentinels to fail over from port {killed.port}", moved, timeout or 60.0)
        return found[0]

    def __repr__(self) -> str:
        return (
            f"RedisSentinelTopology(data={[n.port for n in self.data_nodes]}, "
            f"sentinels={[s.port for s in self.sentinels]})"
        )
