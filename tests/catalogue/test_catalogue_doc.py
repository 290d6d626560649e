"""docs/bad-input.md and the catalogue's tests name each other: no row without a test,
no test without a row."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.celery_worker import REPO_ROOT

pytestmark = pytest.mark.unit

DOC = REPO_ROOT / "docs" / "bad-input.md"
_TEST_REF = re.compile(r"`(tests/[^`]+::[^`]+)`")


def _rows() -> list[tuple[str, list[str]]]:
    rows = []
    for line in DOC.read_text("utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            rows.append((line, _TEST_REF.findall(line)))
    return rows


def _collected() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/catalogue"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.strip() for line in done.stdout.splitlines() if "::" in line}


def test_every_row_names_a_collected_test() -> None:
    rows = _rows()
    assert len(rows) >= 100
    collected = _collected()
    assert all(refs for _, refs in rows), [line for line, refs in rows if not refs]
    missing = [ref for _, refs in rows for ref in refs if ref not in collected]
    assert not missing, f"rows name tests that do not exist: {missing}"


def test_every_catalogue_test_has_a_row() -> None:
    named = {ref for _, refs in _rows() for ref in refs}
    this_module = "tests/catalogue/test_catalogue_doc.py::"
    unlisted = sorted(t for t in _collected() if t not in named and not t.startswith(this_module))
    assert not unlisted, f"catalogue tests without a row in {DOC.name}: {unlisted}"


def test_row_numbers_are_consecutive() -> None:
    numbers = [int(line.split("|")[1]) for line, _ in _rows()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert f"{len(numbers)} rows." in DOC.read_text("utf-8")
