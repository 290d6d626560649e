"""README.md stays true to the code: the settings table, the quick start, the CLI table."""

from __future__ import annotations

import ast
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import click
import pytest
from agents_persistence.config import Settings
from agents_persistence.tasks.cli.main import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TIMES = "\N{MULTIPLICATION SIGN}"


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


# -- every claim names its test, and the tests it names exist ------------------------------------
def named_tests() -> set[tuple[str, str]]:
    """Every ``tests/...py::test_name`` the README names (a parametrized id left out)."""
    return set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)", README))


def test_the_readme_names_its_proofs() -> None:
    assert len(named_tests()) >= 25
    for section_title in ("Consistency model", "Failure model"):
        assert "tests/" in section(section_title)


@pytest.mark.parametrize(("path", "name"), sorted(named_tests()))
def test_every_test_the_readme_names_exists(path: str, name: str) -> None:
    source = ROOT / path
    assert source.is_file(), f"README names {path}, which does not exist"
    assert re.search(rf"^(async )?def {name}\(", source.read_text(), re.M), (
        f"README names {path}::{name}, which does not exist"
    )


def test_the_invariant_table_names_only_existing_handler_tests() -> None:
    """The failure model's table names tests of tests/unit/test_handlers.py by bare name."""
    handlers = (ROOT / "tests/unit/test_handlers.py").read_text()
    table = section("Failure model").split("No handler swallows")[0]
    bare = set(re.findall(r"`(test_\w+)`", table))
    assert len(bare) >= 8
    for name in bare:
        assert re.search(rf"^def {name}\(", handlers, re.M), name


# -- the Python blocks ---------------------------------------------------------------------------
def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_every_python_block_stands_on_its_own(tmp_path: Path) -> None:
    """No block uses a name another block defined (ruff's undefined-name check on each alone);
    tests/integration/test_readme_snippets.py runs them."""
    blocks = python_blocks()
    assert len(blocks) >= 4
    ruff = Path(sys.executable).with_name("ruff")
    for i, block in enumerate(blocks):
        path = tmp_path / f"block_{i}.py"
        path.write_text(block)
        found = subprocess.run(
            [str(ruff), "check", "--no-cache", "--isolated", "--select", "F", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.returncode == 0, f"README block {i}:\n{block}\n{found.stdout}"


# -- the Rust crate ------------------------------------------------------------------------------
def test_the_rust_crate_cannot_parse_our_records() -> None:
    """The crate's load_state is ``serde_json::from_str`` of the whole value, and its
    list_threads reads ``<ns>:threads``: neither works on what we write."""
    import fakeredis
    from agents_persistence import AgentStateSnapshot, RedisCheckpointer
    from agents_persistence.codec import HEADER_SIZE, MAGIC

    client = fakeredis.FakeRedis()
    store = RedisCheckpointer(client, namespace="rust")
    small = AgentStateSnapshot(files={"a.md": "x"})
    large = AgentStateSnapshot(files={"a.md": "x" * 20_000})  # compressed (16 KB and up)
    store.save_state("small", small)
    store.save_state("large", large)
    store.delete_thread("gone")
    for tid in ("small", "large", "gone"):
        raw = client.get(store.keys.thread(tid))
        assert isinstance(raw, bytes)
        assert raw.startswith(MAGIC)
        with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):  # as serde_json does
            json.loads(raw)
    plain = client.get(store.keys.thread("small"))
    assert isinstance(plain, bytes)
    assert AgentStateSnapshot.model_validate_json(plain[HEADER_SIZE:]) == small
    assert not client.exists("rust:threads")


def test_the_crates_threads_load_but_are_not_listed() -> None:
    """A state the crate saved loads as version 0; the crate's index is not ours."""
    import fakeredis
    from agents_persistence import AgentStateSnapshot, RedisCheckpointer

    from tests.support import SEED_JSON

    client = fakeredis.FakeRedis()
    client.set("rust:thread:t1", SEED_JSON)  # what the crate's save_state does
    client.sadd("rust:threads", "t1")
    store = RedisCheckpointer(client, namespace="rust")
    checkpoint = store.load_checkpoint("t1")
    assert checkpoint is not None
    assert checkpoint.version == 0
    assert checkpoint.state == AgentStateSnapshot.model_validate_json(SEED_JSON)
    assert store.list_threads() == []


# -- the failure model's arithmetic --------------------------------------------------------------
def test_the_outage_figures_are_the_defaults() -> None:
    """How long a store outage is ridden out: the figures follow from Settings' defaults."""
    settings = Settings.model_construct()
    policy = settings.build_retry_policy()
    backoff = settings.task_backoff
    retries = settings.task_max_retries
    calls = retries + 1
    ceilings = [f"{backoff.ceiling(n):g}" for n in range(retries)]
    text = " ".join(section("Failure model").split())
    span = settings.task_retry_span_seconds
    call = settings.store_retry_span_seconds
    hanging = calls * call + span
    expected = [
        f"up to {settings.retry_attempts + 1} attempts",
        f"at most {policy.worst_case_seconds:g} s",
        f"within {call:g} s",
        f"up to {retries} times",
        f"{', '.join(ceilings[:-1])} and {ceilings[-1]} s",
        f"{span:g} s in all, at least {span / 2:g} s after jitter",
        f"up to {hanging:g} s ({calls} {TIMES} {call:g} s + {span:g} s)",
        f"{calls} {TIMES} {settings.retry_attempts + 1} = {calls * (settings.retry_attempts + 1)}",
    ]
    for figure in expected:
        assert figure in text, figure
    low = span / 2 + calls * (policy.worst_case_seconds - policy.initial_backoff * 4)
    high = span + calls * policy.worst_case_seconds
    assert f"roughly {round(low, -1):g} to {round(high, -1):g} s" in text
    window = settings.effective_visibility_timeout + span
    assert f"{window:g} s with the defaults" in " ".join(section("Consistency model").split())


@pytest.mark.parametrize(
    "module",
    ["tasks/client/checkpointer.py", "tasks/client/buffer.py", "tasks/worker/handlers.py"],
)
def test_the_durability_docstrings_name_existing_tests(module: str) -> None:
    """The modules whose docstrings say what survives what name the tests that prove it."""
    docstring = ast.get_docstring(ast.parse((ROOT / module).read_text())) or ""
    named = set(re.findall(r"``(tests/[\w/]+\.py)``", docstring))
    assert named, f"{module}'s docstring names no test"
    for path in named:
        assert (ROOT / path).is_file(), f"{module} names {path}, which does not exist"
