"""agents_persistence.tasks.devtools.redis_server: which private Redis the demo picks, and its
errors when there is none."""

from __future__ import annotations

import pytest
from agents_persistence.tasks.devtools import redis_server as embedded
from agents_persistence.tasks.devtools.redis_server import EmbeddedRedisError, start_embedded_redis

pytestmark = pytest.mark.unit


def test_nothing_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "find_redis_server", lambda: None)
    monkeypatch.setattr(embedded, "fakeredis_available", lambda: False)
    with pytest.raises(EmbeddedRedisError, match=r"no redis-server on PATH and fakeredis\[lua\]"):
        start_embedded_redis()
    with pytest.raises(EmbeddedRedisError, match="no redis-server on PATH"):
        start_embedded_redis("redis-server")


def test_auto_prefers_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    picked: list[str] = []
    monkeypatch.setattr(embedded, "find_redis_server", lambda: "/opt/redis-server")
    monkeypatch.setattr(embedded, "_start_redis_server", lambda b, t: picked.append(b))
    monkeypatch.setattr(embedded, "_start_fakeredis", lambda t: picked.append("fakeredis"))
    start_embedded_redis("auto")
    start_embedded_redis("fakeredis")
    assert picked == ["/opt/redis-server", "fakeredis"]


def test_auto_falls_back_to_fakeredis(monkeypatch: pytest.MonkeyPatch) -> None:
    picked: list[str] = []
    monkeypatch.setattr(embedded, "find_redis_server", lambda: None)
    monkeypatch.setattr(embedded, "fakeredis_available", lambda: True)
    monkeypatch.setattr(embedded, "_start_fakeredis", lambda t: picked.append("fakeredis"))
    start_embedded_redis()
    assert picked == ["fakeredis"]
