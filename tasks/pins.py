"""Checks that the library internals the layer overrides still exist.

The Redis transport (``broker.redis_transport``) and the worker pool (``worker.pool``)
override private methods of kombu and Celery, written against the minor versions
pyproject.toml pins. A release that renamed one would silently bring back the bug the
override fixes, so importing either module fails instead, naming what is missing.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["missing_internals", "require_internals"]


def missing_internals(required: dict[type, tuple[str, ...]]) -> list[str]:
    """``module.Class.attribute`` names of ``required`` that do not exist."""
    return [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, names in required.items()
        for name in names
        if not hasattr(cls, name)
    ]


def require_internals(
    required: dict[type, tuple[str, ...]], *, distribution: str, written_for: str, user: str
) -> None:
    """Raise ImportError naming what of ``required`` the installed ``distribution`` lacks.

    Args:
        required: classes and the attribute names relied on.
        distribution: the package's distribution name (``kombu``, ``celery``).
        written_for: the version the override was written against (``5.7``).
        user: what relies on them, for the message (``Redis transport``).
    """
    missing = missing_internals(required)
    if missing:
        raise ImportError(
            f"agents_persistence's {user} was written against {distribution} {written_for}, "
            f"but the installed {distribution} {metadata.version(distribution)} lacks: "
            f"{', '.join(missing)}. Install the version pyproject.toml pins."
        )
