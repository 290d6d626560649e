"""compose.yaml and the Dockerfile, checked without a Docker engine.

The deployment must run the same Celery app as the tests (``-A agents_persistence.tasks``),
exactly one beat,
a Redis that neither loses acknowledged writes nor evicts state, and only settings that
``config.Settings`` really reads.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agents_persistence.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PREFIX = str(Settings.model_config.get("env_prefix", ""))


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def celery_role(service: dict[str, Any]) -> str | None:
    """``worker`` / ``beat`` for ``celery -A agents_persistence.tasks <role>`` commands, else
    None."""
    args = argv(service)
    if not args or args[0] != "celery" or "-A" not in args:
        return None
    app = args[args.index("-A") + 1]
    return f"{app}:{args[args.index('-A') + 2]}"


def test_worker_and_beat_run_the_tasks_app(services: dict[str, dict[str, Any]]) -> None:
    assert celery_role(services["worker"]) == "agents_persistence.tasks:worker"
    assert celery_role(services["beat"]) == "agents_persistence.tasks:beat"
    assert "--concurrency" in argv(services["worker"])


def test_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = [name for name, svc in services.items() if "beat" in argv(svc)]
    assert beats == ["beat"]
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert beat.get("scale", 1) == 1
    text = (ROOT / "compose.yaml").read_text()
    assert re.search(r"exactly one beat", text, re.IGNORECASE), "the beat rule is not written down"


def test_every_variable_is_a_settings_field(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    seen = 0
    for name, svc in services.items():
        ours = {k: v for k, v in environment(svc).items() if k.upper().startswith(PREFIX)}
        for key in ours:
            assert key[len(PREFIX) :].lower() in fields, f"{name}: {key} is not a Settings field"
        seen += len(ours)
        if ours:
            # The values validate as well (URL schemes, namespace pattern, bounds).
            Settings.model_validate({k[len(PREFIX) :].lower(): v for k, v in ours.items()})
    assert seen, "compose.yaml configures nothing through AGENTS_PERSISTENCE_* variables"
    assert environment(services["worker"]) == environment(services["beat"])
    assert environment(services["worker"])[f"{PREFIX}REDIS_URL"] == "redis://redis:6379/0"


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = argv(redis)
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_worker_and_beat_wait_for_a_healthy_redis(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_flower_is_optional(services: dict[str, dict[str, Any]]) -> None:
    assert services["flower"]["profiles"] == ["flower"]
    for name in ("redis", "worker", "beat"):
        assert "profiles" not in services[name]


def test_flower_watches_the_workers_broker(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    broker = environment(services["worker"])[f"{PREFIX}BROKER_URL"]
    assert environment(flower)["CELERY_BROKER_URL"] == broker
    script = argv(flower)[-1]
    assert "celery flower" in script
    assert "--broker" not in script, "the broker URL (and its password) would show in ps"


def test_flower_credentials_come_from_the_environment_only(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    # No default value: `${FLOWER_BASIC_AUTH:-}` is empty unless the operator sets it.
    assert environment(flower)["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert "basic-auth" not in " ".join(argv(flower))
    assert "FLOWER_UNAUTHENTICATED_API" not in environment(flower)


def _flower_guard(services: dict[str, dict[str, Any]], tmp_path: Path, auth: str | None) -> Any:
    """Run the Flower service's ``sh -c`` script as its container would (compose turns
    ``$$`` into ``$``), with a stand-in ``celery`` that prints its arguments."""
    args = argv(services["flower"])
    assert args[:2] == ["sh", "-c"]
    fake = tmp_path / "celery"
    fake.write_text('#!/bin/sh\necho "celery $*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.defpath}"}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    script = args[2].replace("$$", "$")
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("auth", [None, "", "ops", "ops:", ":secret"])
def test_flower_refuses_to_start_without_credentials(
    services: dict[str, dict[str, Any]], tmp_path: Path, auth: str | None
) -> None:
    done = _flower_guard(services, tmp_path, auth)
    assert done.returncode == 1
    assert "FLOWER_BASIC_AUTH=user:password" in done.stderr
    assert "celery" not in done.stdout


def test_flower_starts_with_credentials(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    done = _flower_guard(services, tmp_path, "ops:s3cret")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["celery", "flower", "--port=5555"]


def test_worker_healthcheck_pings_its_own_node(services: dict[str, dict[str, Any]]) -> None:
    check = services["worker"]["healthcheck"]
    kind, command = check["test"]
    assert kind == "CMD-SHELL"  # a shell, to expand $HOSTNAME
    args = shlex.split(command)
    assert args[:5] == ["celery", "-A", "agents_persistence.tasks", "inspect", "ping"]
    # celery@<hostname> is the worker's default node name; `$$` is compose's escape, a
    # single `$` would be expanded (to nothing) by compose itself.
    assert args[args.index("-d") + 1] == "celery@$$HOSTNAME"
    assert not re.search(r"(?<!\$)\$HOSTNAME", command)
    timeout = float(args[args.index("--timeout") + 1])
    assert timeout < _seconds(check["timeout"])
    assert "healthcheck" not in services["beat"], "beat answers no remote control"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, duration
    return float(match[1]) * units[match[2]]


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(re.search(r"\bpip install \.(\s|$)", line) for line in lines)
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    for path in ("pyproject.toml", "config", "persistence", "tasks"):
        assert path in copied, f"the image does not get {path}"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1] not in {"root", "0"}
