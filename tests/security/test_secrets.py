"""Secrets: passwords in the store's and the broker's URLs never show.

Not in reprs, exceptions (and their causes), log records, a worker's log and output, the
CLI's output, nor the demo's. The servers are private redis-servers with a password only
this test knows, and the sweep covers the failure paths too: a wrong password, a broker and
a store that are down, a broker restart the worker reconnects after.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from agents_persistence import HandOffError, RedisCheckpointer, StoreUnavailable
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer, create_app
from pydantic import ValidationError

from tests.integration.conftest import WorkerFactory
from tests.support import RedisServer, free_port, sample_state
from tests.support.celery_worker import REPO_ROOT, clean_environ, settings_env

#: Distinctive, and with characters URLs must quote: found if it leaks in any form.
PASSWORD = "Sup3r-S3cret/pa:ss@word"
QUOTED = quote(PASSWORD, safe="")
FORMS = (PASSWORD, QUOTED, "Sup3r-S3cret")


def assert_clean(text: str, where: str) -> None:
    for form in FORMS:
        assert form not in text, f"the password leaked into {where}:\n{text[:2000]}"


def _url(port: int, password: str = PASSWORD) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.__cause__)


def test_settings_never_show_the_password() -> None:
    """repr, str, JSON dump and validation errors of Settings."""
    settings = Settings(_env_file=None, redis_url=_url(6390), broker_url=_url(6391))
    assert_clean(repr(settings), "repr(Settings)")
    assert_clean(str(settings), "str(Settings)")
    assert_clean(settings.model_dump_json(), "Settings.model_dump_json()")
    no_host = _url(6390).replace("127.0.0.1:6390", "")
    for bad in (
        {"redis_url": _url(6390), "ttl_seconds": -1},
        {"redis_url": no_host},
        {"redis_url": _url(6390), "broker_url": "ftp" + _url(6391)[5:]},
    ):
        with pytest.raises(ValidationError) as info:
            Settings(_env_file=None, **bad)
        assert_clean(str(info.value), "a Settings ValidationError")
        assert_clean(repr(info.value), "a Settings ValidationError")


@pytest.mark.timeout(60)
def test_failures_never_show_the_password(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Reprs of every object, and the errors (with their causes) and log records of: a
    wrong password, a store that is down, a broker that is down."""
    caplog.set_level(logging.DEBUG)
    server = redis_server_factory(requirepass=PASSWORD)
    dead_port = free_port()
    settings = Settings(
        _env_file=None,
        redis_url=_url(server.port),
        broker_url=_url(dead_port),
        namespace=f"sec-{uuid.uuid4().hex[:8]}",
        retry_attempts=1,
        retry_deadline_seconds=0.5,
        publish_max_retries=1,
        publish_timeout_seconds=0.5,
    )
    store = RedisCheckpointer.from_settings(settings)
    app = create_app(settings, store=store)
    client = CeleryCheckpointer(store, app)
    texts = [repr(settings), repr(store), repr(client), repr(app), str(app.conf.humanize())]
    with pytest.raises(HandOffError) as handoff:
        client.save_state("t", sample_state("t"))
    texts.append(_exception_text(handoff.value))
    down = RedisCheckpointer.from_settings(
        settings.model_copy(update={"redis_url": settings.broker_url})
    )
    with pytest.raises(StoreUnavailable) as unavailable:
        down.load_state("t")
    texts.append(_exception_text(unavailable.value))
    wrong = RedisCheckpointer.from_url(_url(server.port, PASSWORD + "x"))
    with pytest.raises(Exception) as refused:  # noqa: PT011 - any error, as long as it is clean
        wrong.load_state("t")
    texts.append(_exception_text(refused.value))
    texts.extend(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for i, text in enumerate(texts):
        assert_clean(text, f"text #{i}")
    for closing in (store, down, wrong):
        closing.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_worker_log_and_output_never_show_the_password(
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_factory: WorkerFactory,
    tmp_path: Path,
    log_format: str,
) -> None:
    """A worker at -l debug on password-protected store and broker: its banner, task logs,
    the retries of a paused store, and its reconnection after a broker restart; in either
    log format (json: every line one JSON object)."""
    store_server = redis_server_factory(requirepass=PASSWORD)
    broker_server = redis_server_factory(requirepass=PASSWORD, appendonly=True)
    tag = uuid.uuid4().hex[:8]
    fields: dict[str, Any] = {
        "redis_url": _url(store_server.port),
        "broker_url": _url(broker_server.port),
        "namespace": f"sec-{tag}",
        "queue": f"sec-{tag}",
        "socket_timeout_seconds": 1.0,
        "retry_attempts": 1,
        "retry_deadline_seconds": 0.5,
        "log_format": log_format,
    }
    settings = Settings(_env_file=None, **fields)
    worker = celery_worker_factory(settings_env(**fields), loglevel="debug")
    store = RedisCheckpointer.from_settings(settings)
    with CeleryCheckpointer(store, create_app(settings, store=store)) as client:
        client.save_state("a", sample_state("a"), version=1).wait(20)
        store_server.pause()
        client.save_state("b", sample_state("b"), version=1)
        worker.wait_for_log("retry: Retry in", timeout=60)  # the save fails, retries, logs
        store_server.resume()
        broker_server.restart()
        client.save_state("c", sample_state("c"), version=1).wait(60)
        client.flush(60)
    assert worker.log_count("Connected to ") >= 2  # reconnected after the restart
    assert worker.log_count("retry: Retry in") > 0
    assert_clean(worker.log_text(), "the worker's log")
    assert_clean(worker.output_path.read_text("utf-8", "replace"), "the worker's output")
    if log_format == "json":
        # The task's success line follows the write the client saw durable: wait for it.
        deadline = time.monotonic() + 60
        while True:
            text = worker.log_text()
            *whole, _partial = text.split("\n")  # the worker may be writing the next line
            lines = [json.loads(line) for line in whole if line.strip()]
            stored = [line for line in lines if line.get("outcome") == "written"]
            if {line.get("thread_id") for line in stored} >= {"a", "c"}:
                break
            assert time.monotonic() < deadline, f"no 'written' lines for a and c: {stored}"
            time.sleep(0.1)
        assert all(isinstance(line, dict) and "message" in line for line in lines)
        assert all(line["version"] == 1 for line in stored)
    store.close()


def _cli(
    *args: str, env: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "agents-persistence"), *args],
        check=False,
        cwd=REPO_ROOT,
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(240)
def test_cli_and_demo_never_show_the_password(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Every operator command, the demo, and the errors of a wrong password and of a store
    that is down, with -v (retries and warnings logged)."""
    server = redis_server_factory(requirepass=PASSWORD)
    ns = f"sec-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url=_url(server.port), namespace=ns)
    store = RedisCheckpointer.from_url(_url(server.port), namespace=ns)
    store.save_state("t", sample_state("t"))
    runs = [
        _cli("-v", "list", env=env),
        _cli("-v", "show", "t", env=env),
        _cli("-v", "stats", env=env),
        _cli("-v", "cleanup", env=env),
        _cli("-v", "dead-letters", "list", env=env),
        _cli("-v", "delete", "t", env=env),
        _cli("-v", "list", env=settings_env(redis_url=_url(server.port, "wrong"), namespace=ns)),
        _cli("-v", "stats", env=settings_env(redis_url=_url(free_port()), namespace=ns)),
        _cli("-v", "demo", "-n", "3", "-m", "5", "--mode", "durable", "-c", "1", env=env),
    ]
    for run in runs:
        assert_clean(run.stdout + run.stderr, f"the output of {run.args[1:]}")
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[-1].returncode == 0, runs[-1].stdout + runs[-1].stderr
    assert runs[6].returncode != 0
    assert runs[7].returncode != 0
    store.close()
