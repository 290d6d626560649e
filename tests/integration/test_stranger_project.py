"""agents-persistence in a stranger's Celery project: the built wheel, in a fresh venv.

The scratch project has what Celery projects have: its own ``tasks.py`` (a Celery app and a
task), ``config.py`` and ``persistence.py``. With the wheel installed, ``python -m pytest``
there passes a suite that uses both those modules and the plugin's fixtures, and a real
``celery -A agents_persistence.tasks worker`` started from that directory processes a
hand-off made with ``CeleryCheckpointer.from_settings()``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from agents_persistence.tasks.protocol.names import SAVE_TASK

from tests.support import RedisServer
from tests.support.celery_worker import clean_environ, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]

USER_FILES = {
    "config.py": '''
        """The user's settings."""

        GREETING = "hello from the user's config"
        THREAD = "user-thread-1"
        ''',
    "persistence.py": '''
        """The user's own persistence helpers, on top of agents-persistence."""

        from agents_persistence import AgentStateSnapshot, TodoItem


        def make_state(text):
            return AgentStateSnapshot(todos=[TodoItem.pending(text)], files={"notes.md": text})
        ''',
    "tasks.py": '''
        """The user's Celery app, where Celery's convention puts it."""

        from celery import Celery

        import config

        app = Celery("user")
        app.conf.task_always_eager = True


        @app.task
        def greet(name):
            return f"{config.GREETING}, {name}"
        ''',
    "test_user_project.py": """
        import sys
        from pathlib import Path

        import agents_persistence
        import config
        import persistence
        import tasks
        from agents_persistence.tasks import CeleryCheckpointer

        HERE = Path(__file__).resolve().parent


        def test_the_users_modules_are_the_users():
            for module in (tasks, config, persistence):
                assert Path(module.__file__).resolve().parent == HERE
            assert tasks.app.main == "user"
            assert tasks.greet.delay("ada").get(timeout=5) == "hello from the user's config, ada"
            assert not hasattr(tasks, "CeleryCheckpointer")
            # The wheel in this venv, not a checkout.
            assert Path(agents_persistence.__file__).is_relative_to(sys.prefix)


        def test_plugin_fixtures_with_user_modules(eager_checkpointer, persistence_store):
            assert isinstance(eager_checkpointer, CeleryCheckpointer)
            state = persistence.make_state(config.GREETING)
            eager_checkpointer.save_state(config.THREAD, state, version=1).wait(timeout=5)
            assert persistence_store.load_state(config.THREAD) == state
            assert eager_checkpointer.list_threads() == [config.THREAD]
        """,
    "handoff.py": '''
        """Hand one snapshot to the worker and wait until it is durable; prints what it saw."""

        import json
        import time

        import config
        import persistence
        from agents_persistence.tasks import CeleryCheckpointer

        client = CeleryCheckpointer.from_settings()
        state = persistence.make_state(config.GREETING)
        started = time.monotonic()
        handle = client.save_state(config.THREAD, state, version=7)
        handle.wait(timeout=60)
        waited = time.monotonic() - started
        loaded = client.load_checkpoint(config.THREAD)
        client.close()
        print(json.dumps({
            "handle": repr(handle),
            "mode": client.mode,
            "waited_s": round(waited, 3),
            "loaded_version": loaded.version,
            "same_state": loaded.state == state,
        }))
        ''',
}


@dataclass
class Venv:
    """A fresh virtual environment with the wheel installed."""

    path: Path
    wheel: Path

    @property
    def python(self) -> Path:
        """Its interpreter."""
        return self.path / "bin" / "python"


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv``; its output, or an assertion error that shows it."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{output[-4000:]}"
    return output


def _source_copy(destination: Path) -> Path:
    """The files a build reads, copied out of the checkout.

    A build in place writes ``build/`` and ``*.egg-info`` into the shared working tree, and
    setuptools' ``build/lib`` keeps modules deleted since: a wheel built from it could hold
    a stale file the source no longer has. A copy is clean and safe to build concurrently.
    """
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_dirs = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    destination.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, destination / entry.name)
        elif entry.name in package_dirs:
            shutil.copytree(
                entry, destination / entry.name, ignore=shutil.ignore_patterns("__pycache__")
            )
    return destination


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel built from this checkout, installed with its ``test`` extra in a new venv."""
    base = tmp_path_factory.mktemp("stranger")
    wheels = base / "wheels"
    source = _source_copy(base / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source])
    (wheel,) = wheels.glob("agents_persistence-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        roots = {name.split("/")[0] for name in archive.namelist()}
    assert {r for r in roots if not r.endswith(".dist-info")} == {"agents_persistence"}

    # Why this way: a venv without pip (0.1 s instead of ~6 s for ensurepip), filled by this
    # environment's pip through --python, and --no-compile (the interpreter compiles what it
    # imports). The dependencies come from the index as a user's would, through pip's cache,
    # so the wheel's declared requirements are what is tested, not this .venv's contents.
    # Measured here: ~15 s, against ~39 s for `python -m venv` + `pip install` with byte
    # compilation; an offline wheelhouse would need the same downloads once to build.
    path = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    python = path / "bin" / "python"
    pip: list[str | os.PathLike[str]] = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "-q", "--no-compile", f"{wheel}[test]"])
    return Venv(path=path, wheel=wheel)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project with the user's own ``tasks.py``, ``config.py``, ``persistence.py``."""
    directory = tmp_path / "user-project"
    directory.mkdir()
    for name, text in USER_FILES.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


def _user_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A user's shell: no settings of ours, no PYTHONPATH into this checkout."""
    env = clean_environ(extra)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``celery -A agents_persistence.tasks worker`` processes; each is stopped by PID
    (SIGTERM, then SIGKILL of its own process group) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        python: Path, cwd: Path, env: Mapping[str, str], queue: str, log: Path
    ) -> subprocess.Popen[bytes]:
        argv = [str(python), "-m", "celery", "-A", "agents_persistence.tasks", "worker",
                "-P", "solo", "-Q", queue, "-l", "info", "-n", f"stranger-{queue}@%h",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
                "--logfile", str(log)]  # fmt: skip
        with open(tmp_path / "worker.out", "ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=_user_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text("utf-8", "replace") if path.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {path.name} (exit {proc.poll()}):\n{content}")
        time.sleep(0.05)


def test_pytest_in_the_users_project_passes_with_the_plugins_fixtures(
    venv: Venv, project: Path
) -> None:
    output = _run([venv.python, "-m", "pytest", "-v"], cwd=project, env=_user_env())

    print(output)  # the run's report, for the record (pytest -s shows it)
    assert "plugins:" in output
    assert "agents-persistence-" in output.split("plugins:")[1].splitlines()[0]
    assert "test_the_users_modules_are_the_users PASSED" in output
    assert "test_plugin_fixtures_with_user_modules PASSED" in output
    assert " 2 passed" in output


def test_a_worker_started_in_the_users_project_processes_a_hand_off(
    venv: Venv,
    project: Path,
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    server = redis_server_factory()
    tag = uuid.uuid4().hex[:8]
    queue = f"q-{tag}"
    env = settings_env(redis_url=server.url, namespace=f"t-{tag}", queue=queue)
    log = tmp_path / "worker.log"

    worker = start_worker(venv.python, project, env, queue, log)
    _wait_for_text(log, " ready.", worker, timeout=120)
    banner = _wait_for_text(tmp_path / "worker.out", "[tasks]", worker, timeout=30)
    assert f". {SAVE_TASK}" in banner
    assert "tasks.greet" not in banner  # the user's tasks.py was not the app loaded

    output = _run([venv.python, "handoff.py"], cwd=project, env=_user_env(env))
    result = json.loads(output.strip().splitlines()[0])
    print(json.dumps(result))
    assert result == {
        "handle": "HandOff(thread_id='user-thread-1', version=7)",
        "mode": "durable",
        "waited_s": result["waited_s"],
        "loaded_version": 7,
        "same_state": True,
    }
    # The store had the version before the task returned: wait for the task's own log line.
    worker_log = _wait_for_text(log, "] succeeded in ", worker, timeout=30)
    done = [ln for ln in worker_log.splitlines() if f"Task {SAVE_TASK}[" in ln]
    print("\n".join(done))
    assert any("] succeeded in " in ln for ln in done)

    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
