"""The README's performance table is written by ``python -m bench.run --readme``: between its
markers only, from the run's targets, each met or with its distance from the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Section
from bench.readme import END, README, START, render, update

pytestmark = pytest.mark.unit

META = {"command": "python -m bench.run --readme", "date": "2026-12-02 18:30 UTC",
        "machine": "2 vCPU"}  # fmt: skip


def _sections() -> list[Section]:
    p3 = Section("P3", "Store hot paths", ["size", "operation"])
    p3.add(size="4 KB", operation="save_state", _hidden=1.0)
    p3.target("save ≤ 1.1x raw write, 4 KB", 1.05, 1.1)
    p3.target("save ≤ 1.1x raw write, 64 KB", 1.32, 1.1, "a | pipe")
    p3.seconds = 12.0
    failed = Section("P5", "failed", ["error"])
    failed.add(error="ConnectionError: no PostgreSQL")
    return [p3, failed]


def test_the_readme_has_one_generated_block_in_its_performance_section() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1
    assert text.count(END) == 1
    performance = text.index("\n## Performance\n")
    after = text.find("\n## ", performance + 1)
    assert performance < text.index(START) < text.index(END) < (after if after > 0 else len(text))


def test_every_target_is_shown_met_or_with_its_distance() -> None:
    block = render(META, _sections())
    assert "| P3 | save ≤ 1.1x raw write, 4 KB | 1.05 | 1.1 | met |" in block
    assert (
        "| P3 | save ≤ 1.1x raw write, 64 KB | 1.32 (a \\| pipe) | 1.1 | "
        "not met: 1.20x the limit |"
    ) in block
    assert "| P5 | the section failed | ConnectionError: no PostgreSQL | | not run |" in block
    assert "noisy" in block
    assert "2026-12-02 18:30 UTC" in block
    assert "\n#### P3 — Store hot paths\n" in block  # every section's own table follows
    assert "_hidden" not in block


def test_update_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")
    update("new table\n", readme)
    assert readme.read_text(encoding="utf-8") == (
        f"# Title\n\nbefore\n{START}\nnew table\n{END}\nafter\n"
    )
    update("again\n", readme)  # idempotent: the markers stay
    assert readme.read_text(encoding="utf-8").count(START) == 1
    assert "new table" not in readme.read_text(encoding="utf-8")


def test_update_refuses_a_readme_without_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{END}\nno start\n", encoding="utf-8")
    with pytest.raises(ValueError, match="block"):
        update("table\n", readme)
    assert readme.read_text(encoding="utf-8") == f"{END}\nno start\n"
