"""Rendering results: rich tables for the terminal, JSON and Markdown files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from bench.common import Section

__all__ = ["markdown", "rich_table", "targets_table", "write"]


def _visible(sec: Section) -> list[str]:
    return [c for c in sec.columns if not c.startswith("_")]


def rich_table(sec: Section) -> Group:
    """One section as a rich table, followed by its targets."""
    table = Table(title=f"{sec.key} — {sec.title}", title_justify="left")
    for col in _visible(sec):
        table.add_column(
            col, justify="left" if col in {"size", "variant", "operation"} else "right"
        )
    for row in sec.rows:
        table.add_row(*(str(row.get(c, "")) for c in _visible(sec)))
    targets = Table(show_header=False, box=None, padding=(0, 1))
    for t in sec.targets:
        mark = "[green]met[/]" if t.met else "[red]not met[/]"
        targets.add_row(f"{t.name}", f"{t.measured:.2f} (limit {t.limit:g})", mark)
    for note in sec.notes:
        targets.add_row(f"[dim]{note}[/]", "", "")
    return Group(table, targets)


def targets_table(sections: list[Section]) -> Table:
    """Every section's targets side by side: the run's summary, printed last."""
    table = Table(title="Targets of this run", title_justify="left")
    for col in ("", "target", "measured", "limit", ""):
        table.add_column(col, justify="right" if col in {"measured", "limit"} else "left")
    for sec in sections:
        for t in sec.targets:
            distance = f": {t.measured / t.limit:.2f}x" if t.limit > 0 else ""
            mark = "[green]met[/]" if t.met else f"[red]not met{distance}[/]"
            detail = f" ({t.detail})" if t.detail else ""
            table.add_row(sec.key, t.name, f"{t.measured:.2f}{detail}", f"{t.limit:g}", mark)
    return table


def markdown(meta: dict[str, Any], sections: list[Section]) -> str:
    """The whole run as Markdown (the README's performance table comes from here)."""
    out = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` — {meta['date']}; {meta['machine']}.",
        "",
    ]
    for sec in sections:
        cols = _visible(sec)
        out += [f"## {sec.key} — {sec.title}", ""]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for row in sec.rows:
            out.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
        out.append("")
        for t in sec.targets:
            verdict = "**met**" if t.met else "**not met**"
            extra = f" — {t.detail}" if t.detail else ""
            out.append(f"- {t.name}: {t.measured:.2f} (limit {t.limit:g}) {verdict}{extra}")
        for note in sec.notes:
            out.append(f"- {note}")
        out += [f"- section time: {sec.seconds:.0f} s", ""]
    return "\n".join(out)


def write(directory: Path, meta: dict[str, Any], sections: list[Section]) -> tuple[Path, Path]:
    """Write ``latest.json`` and ``latest.md``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    js, md = directory / "latest.json", directory / "latest.md"
    payload = {"meta": meta, "sections": [asdict(s) for s in sections]}
    js.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(markdown(meta, sections), encoding="utf-8")
    return js, md
