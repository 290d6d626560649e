"""``agents_persistence.langgraph`` exports deliberately, like the other packages (the same
checks as ``tests/unit/test_public_api.py``)."""

from __future__ import annotations

import agents_persistence.langgraph as package

import tests.unit.test_public_api as api


def test_the_package_exports_what_it_documents() -> None:
    api.test_all_is_sorted_without_duplicates(package)
    api.test_all_matches_the_public_names(package)
    api.test_star_import_gives_exactly_all(package)
    api.test_exported_classes_and_functions_are_documented(package)
    assert "RedisCheckpointSaver" in package.__all__
