"""The distribution installs one import root, and its package list is complete.

``pyproject.toml`` maps the repository's directories onto ``agents_persistence`` with an
explicit package list; a sub-package missing from it would work in an editable install and
be absent from the wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return config


def _expected_packages(package_dir: dict[str, str]) -> set[str]:
    found: set[str] = set()
    for name, directory in package_dir.items():
        base = ROOT / directory
        for path in [base, *base.rglob("*")]:
            if not path.is_dir() or path.name == "__pycache__":
                continue
            if (path / "__init__.py").exists() or any(path.glob("*.lua")):
                relative = path.relative_to(base).parts
                found.add(".".join((name, *relative)))
    return found


def test_every_package_maps_under_one_import_root() -> None:
    config = _setuptools()
    package_dir = config["package-dir"]
    assert isinstance(package_dir, dict)
    assert package_dir == {
        "agents_persistence": "persistence",
        "agents_persistence.tasks": "tasks",
        "agents_persistence.config": "config",
    }
    packages = config["packages"]
    assert isinstance(packages, list)
    assert {p.split(".")[0] for p in packages} == {"agents_persistence"}
    assert set(packages) == _expected_packages(package_dir)


def test_the_plugin_and_script_live_under_the_root() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["pytest11"] == {
        "agents_persistence": "agents_persistence.tasks.testing"
    }
    assert project["scripts"]["agents-persistence"].startswith("agents_persistence.")
