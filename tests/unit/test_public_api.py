"""Each package exports deliberately: ``__all__`` is sorted and matches what it defines."""

from __future__ import annotations
import __future__

import inspect
import re
from types import ModuleType

import agents_persistence as persistence
import pytest
from agents_persistence import config, tasks

pytestmark = pytest.mark.unit

PACKAGES = [
    pytest.param(persistence, id="agents_persistence"),
    pytest.param(config, id="agents_persistence.config"),
    pytest.param(tasks, id="agents_persistence.tasks"),
]


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: SCREAMING_CASE, then CamelCase, then the
    rest, each in natural order (digits compared as numbers)."""
    if re.fullmatch(r"[A-Z0-9_]+", name) and len(name) > 1:
        category = 0
    elif name[:1].isupper():
        category = 1
    else:
        category = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return category, natural


def public_attributes(package: ModuleType) -> set[str]:
    """Public names bound in the package that are not submodules or __future__ flags."""
    return {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and not isinstance(value, __future__._Feature)
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_without_duplicates(package: ModuleType) -> None:
    names = list(package.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=isort_key)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_matches_the_public_names(package: ModuleType) -> None:
    exported = set(package.__all__)
    missing = {name for name in exported if not hasattr(package, name)}
    assert not missing, f"in __all__ but not defined: {sorted(missing)}"
    unlisted = public_attributes(package) - exported
    assert not unlisted, f"public but not in __all__: {sorted(unlisted)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_gives_exactly_all(package: ModuleType) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(package.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_classes_and_functions_are_documented(package: ModuleType) -> None:
    undocumented = [
        name
        for name in package.__all__
        if (inspect.isclass(obj := getattr(package, name)) or inspect.isfunction(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert not undocumented


def test_the_contract_names_are_exported() -> None:
    required = {
        "AgentInterrupt",
        "AgentStateSnapshot",
        "Checkpoint",
        "Checkpointer",
        "CorruptState",
        "HitlInterrupt",
        "InMemoryCheckpointer",
        "InvalidSnapshot",
        "InvalidThreadId",
        "PersistenceError",
        "RedisCheckpointer",
        "SnapshotTooLarge",
        "StoreUnavailable",
        "TodoItem",
        "TodoStatus",
    }
    assert required <= set(persistence.__all__)
    assert "Settings" in config.__all__
