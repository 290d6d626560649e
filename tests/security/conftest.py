"""Fixtures of the security tests: real workers (see tests/integration/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import celery_worker_factory

__all__ = ["celery_worker_factory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests here that start workers are ``integration`` tests."""
    here = Path(__file__).parent
    for item in items:
        in_here = here in item.path.parents
        if in_here and "celery_worker_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
