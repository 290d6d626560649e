#!/usr/bin/env python3
"""Print the README's settings table, generated from ``config.Settings.model_fields``.

Run ``.venv/bin/python scripts/settings_table.py`` and paste the output into README.md
(tests/unit/test_readme.py fails while the two differ).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents_persistence.config.settings import Settings
from pydantic import SecretStr


def _default(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_table() -> str:
    """The Markdown table: field, environment variable, default, description."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = [
        "| Setting | Environment variable | Default | Description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `{name}` | `{prefix}{name.upper()}` | `{_default(field.default)}` "
            f"| {description} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
