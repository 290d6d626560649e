"""The private redis-server helper itself: start, signals by PID, restart, auth, cleanup."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import redis

from tests.support import RedisServer, RedisServerError, find_redis_server

pytestmark = pytest.mark.redis

Factory = Callable[..., RedisServer]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_private_server_answers(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping()
    assert client.info("server")["process_id"] == redis_server.pid
    assert client.info("server")["tcp_port"] == redis_server.port
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis.Redis.from_url(redis_server.url).ping()
    assert client.dbsize() == 0


def test_two_servers_get_their_own_ports(redis_server_factory: Factory) -> None:
    a, b = redis_server_factory(), redis_server_factory()
    assert a.port != b.port
    assert a.pid != b.pid
    a.client().set("k", "a")
    assert b.client().get("k") is None


def test_kill_and_restart_keep_aof_data(redis_server_factory: Factory) -> None:
    server = redis_server_factory(appendonly=True)
    port, old_pid = server.port, server.pid
    server.client().set("survives", "yes")
    server.kill()
    assert not server.running
    assert not process_exists(old_pid)
    server.restart()
    assert (server.port, server.directory.exists()) == (port, True)
    assert server.pid != old_pid
    assert server.client().get("survives") == b"yes"


def test_stop_flushes_and_restart_without_aof_starts_empty(redis_server: RedisServer) -> None:
    redis_server.client().set("gone", "soon")
    redis_server.stop()
    assert not redis_server.running
    redis_server.restart()
    assert redis_server.client().get("gone") is None


def test_pause_and_resume(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.3)
    client.ping()
    redis_server.pause()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    redis_server.resume()
    assert client.ping()


def test_a_paused_server_still_stops(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    redis_server.pause()
    redis_server.stop(timeout=5)
    assert not process_exists(pid)


def test_requirepass(redis_server_factory: Factory) -> None:
    server = redis_server_factory(requirepass="s3cret")
    assert ":s3cret@" in server.url
    assert server.client().ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        server.client(password=None).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(server.url_for(password="wrong")).ping()


def test_acl_user_through_extra_args(redis_server_factory: Factory) -> None:
    server = redis_server_factory(
        extra_args=["--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"]
    )
    alice = redis.Redis.from_url(server.url_for("alice", "alice-pw"))
    try:
        assert alice.acl_whoami() in ("alice", b"alice")
    finally:
        alice.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(server.url_for("alice", "nope")).ping()


def test_close_kills_by_pid_and_removes_the_directory() -> None:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    server = RedisServer().start()
    pid, directory = server.pid, server.directory
    server.close()
    assert not process_exists(pid)
    assert not directory.exists()
    server.close()  # idempotent


def test_context_manager() -> None:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    with RedisServer() as server:
        pid = server.pid
        assert server.client().ping()
    assert not process_exists(pid)


def test_a_failed_start_reports_the_log() -> None:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(extra_args=["--no-such-option", "x"])
    try:
        with pytest.raises(RedisServerError, match="exited"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_version_is_the_servers(redis_server: RedisServer) -> None:
    info = redis_server.client().info("server")
    assert redis_server.version == info["redis_version"]


@pytest.mark.parametrize("die_with_parent", [False, True])
def test_a_server_started_from_a_thread_outlives_it_unless_linked(
    redis_server_factory: Factory, die_with_parent: bool
) -> None:
    """Fault tests restart servers from helper threads: those servers must outlive the
    thread. Only the demo's (started from its main thread) is linked to its starter.
    (``redis_server_factory``: skips without a binary, marks the test ``redis``.)"""
    server = RedisServer(die_with_parent=die_with_parent)
    try:
        starter = threading.Thread(target=server.start)
        starter.start()
        starter.join(30)
        pid = server.pid
        if die_with_parent:
            deadline = time.monotonic() + 10
            while process_exists(pid) and server.running:
                assert time.monotonic() < deadline, "the linked server outlived its thread"
                time.sleep(0.02)
        else:
            assert server.client().ping()
            assert server.running
    finally:
        server.close()
    assert not process_exists(pid)
