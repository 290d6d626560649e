"""The Lua scripts, kept as real ``.lua`` files beside this module."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["LuaScript", "lua"]


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's source and SHA1 (the name EVALSHA knows it by)."""

    name: str
    source: str
    sha: str


@cache
def lua(name: str) -> LuaScript:
    """Load ``lua/<name>.lua`` from the package."""
    source = (
        resources.files("agents_persistence").joinpath("lua", f"{name}.lua").read_text("utf-8")
    )
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())
