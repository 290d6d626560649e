"""The Redis transport overrides private kombu methods: kombu is pinned to the minor version
they were written against, and importing the transport fails loudly if one is missing."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from agents_persistence.tasks.broker import redis_transport
from agents_persistence.tasks.broker.redis_transport import (
    KOMBU_INTERNALS,
    check_kombu_internals,
    missing_kombu_internals,
)
from kombu.transport import redis as kombu_redis

pytestmark = pytest.mark.unit

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_kombu_has_every_internal_the_transport_uses() -> None:
    assert missing_kombu_internals() == []
    check_kombu_internals()


def test_every_method_the_transport_overrides_is_checked() -> None:
    for ours, theirs in (
        (redis_transport.Channel, kombu_redis.Channel),
        (redis_transport.QoS, kombu_redis.QoS),
    ):
        overridden = {
            name for name in vars(ours) if not name.startswith("__") and hasattr(theirs, name)
        }
        assert overridden <= set(KOMBU_INTERNALS[theirs])


def test_a_missing_internal_fails_the_import_with_the_names() -> None:
    class Shrunk:
        def _brpop_start(self) -> None: ...

    required: dict[type, tuple[str, ...]] = {Shrunk: ("_brpop_start", "_brpop_read")}
    assert missing_kombu_internals(required) == [
        f"{__name__}.test_a_missing_internal_fails_the_import_with_the_names.<locals>"
        ".Shrunk._brpop_read"
    ]
    with pytest.raises(ImportError, match=r"kombu 5\.7.*lacks: .*Shrunk\._brpop_read"):
        check_kombu_internals(required)


def test_kombu_is_pinned_to_the_installed_minor_version() -> None:
    dependencies = tomllib.loads(_PYPROJECT.read_text("utf-8"))["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"kombu\b", d)]
    assert pins, "kombu must be pinned in pyproject.toml"
    major, minor = (int(p) for p in metadata.version("kombu").split(".")[:2])
    assert pins == [f"kombu>={major}.{minor},<{major}.{minor + 1}"]
