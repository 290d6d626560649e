"""Celery's own tools see our workers on every supported broker.

``celery -A agents_persistence.tasks inspect ping|registered|active_queues`` and ``status``
answer on the Redis broker as on RabbitMQ (remote control is on for both), and Flower (the
real ``flower`` package) lists the worker and its tasks: task events are on in the worker's
configuration, so Flower needs no remote ``enable_events`` (the tests turn that off).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from agents_persistence.tasks.devtools.processes import (
    clean_environ,
    end_process_group,
    log_tail,
    spawn,
)
from agents_persistence.tasks.devtools.topologies import RedisSentinelTopology
from agents_persistence.tasks.protocol.names import SAVE_TASK, TASK_NAMES

from tests.integration.conftest import Stack, StackFactory
from tests.support import free_port, sample_state
from tests.support.celery_cli import node_name, wait_for_reply
from tests.support.celery_worker import REPO_ROOT, CeleryWorker

pytestmark = pytest.mark.integration

OUR_TASKS = set(TASK_NAMES)
FLOWER_USER, FLOWER_PASSWORD = "ops", "s3cret-flower"


def assert_tools_answer(stack: Stack, worker: CeleryWorker) -> None:
    """``inspect ping``, ``status``, ``inspect registered`` and ``inspect active_queues``
    each get an answer from ``worker``."""
    node = node_name(worker)
    assert wait_for_reply(stack.env, ["inspect", "ping"], node) == {"ok": "pong"}
    assert wait_for_reply(stack.env, ["status"], node) == {"ok": "pong"}
    assert set(wait_for_reply(stack.env, ["inspect", "registered"], node)) == OUR_TASKS
    queues = wait_for_reply(stack.env, ["inspect", "active_queues"], node)
    assert [q["name"] for q in queues] == [stack.queue]


@pytest.mark.redis
def test_celery_tools_on_the_redis_broker(stack: Stack) -> None:
    assert stack.broker is not None  # the stack's private redis-server is the broker
    assert_tools_answer(stack, stack.worker())


def test_celery_tools_on_rabbitmq(stack_factory: StackFactory, rabbitmq_url: str) -> None:
    stack = stack_factory(broker_url=rabbitmq_url)
    assert_tools_answer(stack, stack.worker())


@pytest.mark.redis
def test_celery_tools_on_a_broker_behind_sentinel(
    stack_factory: StackFactory, redis_sentinel: RedisSentinelTopology
) -> None:
    stack = stack_factory(broker_url=redis_sentinel.url(db=2))  # redis+sentinel://.../<service>/2
    assert stack.settings.broker_sentinel is not None
    worker = stack.worker()
    assert_tools_answer(stack, worker)
    # the worker's task events reach a receiver on the same broker
    app, client = stack.app(), stack.client()
    heard: list[dict[str, Any]] = []
    stop = threading.Event()

    def hand_off() -> None:
        # a receiver hears only events sent once it listens: hand off until one is heard
        step = 0
        while not stop.is_set():
            step += 1
            client.save_state("events", sample_state("events"), version=step)
            stop.wait(0.5)

    feeder = threading.Thread(target=hand_off, daemon=True)
    with app.connection_for_read() as conn:

        def succeeded(event: dict[str, Any]) -> None:
            heard.append(event)
            receiver.should_stop = True

        receiver = app.events.Receiver(conn, handlers={"task-succeeded": succeeded})
        feeder.start()
        try:
            receiver.capture(limit=None, timeout=60)
        finally:
            stop.set()
            feeder.join(10)
    assert heard
    assert heard[0]["hostname"] == node_name(worker)


@pytest.mark.redis
def test_compose_worker_healthcheck(stack: Stack) -> None:
    """compose.yaml's worker healthcheck, run as the container's shell runs it: healthy
    (exit 0) while the worker answers, unhealthy once it is gone."""
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    kind, command = compose["services"]["worker"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    worker = stack.worker(name="celery")  # the default node name: celery@<hostname>
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    env = clean_environ({**stack.env, "HOSTNAME": socket.gethostname(), "PATH": path})

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # compose turns `$$` into `$`; the shell expands $HOSTNAME.
            ["sh", "-c", command.replace("$$", "$")],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    healthy = check()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert f"{node_name(worker)}: OK" in healthy.stdout
    worker.stop()
    unhealthy = check()
    assert unhealthy.returncode != 0, unhealthy.stdout


# -- Flower -----------------------------------------------------------------------------------
class Flower:
    """A ``celery flower`` subprocess on a free port of 127.0.0.1, with basic auth."""

    def __init__(self, base: str, auth: tuple[str, str]) -> None:
        self.base = base
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str, *, authenticated: bool = True) -> tuple[int, Any]:
        """(status, parsed JSON body or text) of ``GET path``."""
        request = urllib.request.Request(
            self.base + path, headers=self.headers if authenticated else {}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read().decode()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


@contextlib.contextmanager
def running_flower(
    celery_args: list[str],
    flower_args: list[str],
    env: Mapping[str, str],
    log: Path,
    timeout: float = 60.0,
) -> Iterator[Flower]:
    """Start ``python -m celery <celery_args> flower <flower_args>`` (its own process
    group) on a free port, wait until it serves, and end it by PID afterwards."""
    port = free_port()
    argv = [sys.executable, "-m", "celery", *celery_args, "flower", *flower_args,
            f"--port={port}", "--address=127.0.0.1",
            # Flower would otherwise tell the workers to send events; ours already do.
            "--enable_events=False"]  # fmt: skip
    proc = spawn(argv, log=log, env=clean_environ(env), cwd=REPO_ROOT, death_signal=signal.SIGKILL)
    try:
        flower = Flower(f"http://127.0.0.1:{port}", (FLOWER_USER, FLOWER_PASSWORD))
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if flower.get("/healthcheck", authenticated=False)[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Flower did not start (rc={proc.poll()}):\n{log_tail(log)}")
            time.sleep(0.1)
        yield flower
    finally:
        end_process_group(proc)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.2)
    return found


@pytest.mark.redis
@pytest.mark.parametrize("started", ["with-the-app", "like-compose"])
def test_flower_shows_the_worker_and_its_tasks(stack: Stack, tmp_path: Path, started: str) -> None:
    """Flower on the Redis broker: ``/api/workers`` lists the worker with our tasks, and
    ``/api/tasks`` the save a hand-off sent, with its worker. Started as a user would
    (``-A agents_persistence.tasks``, ``--basic-auth``) or as compose.yaml starts it (a
    bare ``celery flower``: the broker in ``CELERY_BROKER_URL``, the credentials in
    ``FLOWER_BASIC_AUTH``)."""
    worker = stack.worker()
    node = node_name(worker)
    if started == "with-the-app":
        celery_args = ["-A", "agents_persistence.tasks"]
        flower_args = [f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}"]
        env = dict(stack.env)
    else:
        celery_args, flower_args = [], []
        env = {
            "CELERY_BROKER_URL": stack.settings.broker.get_secret_value(),
            "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        }
    log = tmp_path / "flower.log"
    with running_flower(celery_args, flower_args, env, log) as flower:
        assert flower.get("/api/workers", authenticated=False)[0] == 401

        def workers() -> Any:
            status, body = flower.get("/api/workers?refresh=1")
            return body if status == 200 and node in body else None

        listed = wait_for(workers, 60, f"{node} in /api/workers")
        assert set(listed[node]["registered"]) == OUR_TASKS
        assert [q["name"] for q in listed[node]["active_queues"]] == [stack.queue]

        client = stack.client()
        saved: list[str] = []

        def save_task_seen() -> list[dict[str, Any]]:
            # Flower hears only events sent once its receiver listens: hand off again until
            # one of the saves shows up.
            thread_id = f"flower-{len(saved)}"
            client.save_state(thread_id, sample_state(thread_id))
            saved.append(thread_id)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                status, tasks = flower.get(f"/api/tasks?taskname={SAVE_TASK}")
                done = [
                    t for t in (tasks.values() if status == 200 else ())
                    if t["name"] == SAVE_TASK and t["state"] == "SUCCESS"
                ]  # fmt: skip
                if done:
                    return done
                time.sleep(0.2)
            return []

        tasks = wait_for(save_task_seen, 60, f"{SAVE_TASK} SUCCESS in /api/tasks")
        assert {t["worker"] for t in tasks} == {node}
        assert all(t["received"] and t["started"] and t["succeeded"] for t in tasks)
