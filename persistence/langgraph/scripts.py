"""The saver's Lua scripts, kept as real ``.lua`` files in ``lua/`` beside this module."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from agents_persistence.scripts import LuaScript

__all__ = ["SCRIPT_NAMES", "saver_script"]

#: Every script of the saver (all are loaded again after a NOSCRIPT).
SCRIPT_NAMES = ("drop", "drop_runs", "heads", "history", "load", "prune", "put_writes", "touch")


@cache
def saver_script(name: str) -> LuaScript:
    """Load ``lua/<name>.lua`` of this package."""
    source = (
        resources.files("agents_persistence.langgraph")
        .joinpath("lua", f"{name}.lua")
        .read_text("utf-8")
    )
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())
