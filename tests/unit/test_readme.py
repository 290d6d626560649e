"""README.md stays true to the code: the settings table, the quick start, the CLI table."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import click
import pytest
from agents_persistence.config import Settings
from agents_persistence.tasks.cli.main import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_settings_table_is_the_generated_one() -> None:
    generated = runpy.run_path(str(ROOT / "scripts" / "settings_table.py"))["settings_table"]()
    assert generated in README, "README's settings table is stale: paste scripts/settings_table.py"
    for name in Settings.model_fields:
        assert f"`AGENTS_PERSISTENCE_{name.upper()}`" in section("Settings")


def test_quick_start_is_two_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", section("Quick start"), re.S)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["scripts/demo", "scripts/test"]
    for script in ("demo", "test"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, f"scripts/{script} not runnable"


def test_cli_table_lists_every_command() -> None:
    documented = set(re.findall(r"^\| `([a-z-]+(?: [a-z]+)?)", section("The CLI"), re.M))
    actual: set[str] = set()
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            actual |= {f"{name} {sub}" for sub in command.commands}
        else:
            actual.add(name)
    assert documented == actual


def test_performance_section_is_there() -> None:
    assert "bench/" in section("Performance")
