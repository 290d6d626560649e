"""Hypothesis strategies: valid snapshots (anything the models accept and JSON carries), and
inputs near every limit a save or a load has (``near_limit_states``, ``stored_bytes``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from agents_persistence import AgentStateSnapshot, HitlInterrupt, TodoItem, TodoStatus
from agents_persistence.validation import MAX_INT, MAX_JSON_DEPTH, MIN_INT
from hypothesis import strategies as st
from pydantic import JsonValue

__all__ = [
    "edge_values",
    "interrupts",
    "json_values",
    "near_limit_states",
    "snapshots",
    "stored_bytes",
    "todos",
]

_I64 = 2**63 - 1

#: Any JSON value (finite floats, 64-bit ints, any text without lone surrogates).
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-_I64 - 1, max_value=_I64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

todos: st.SearchStrategy[TodoItem] = st.builds(
    TodoItem, content=st.text(max_size=40), status=st.sampled_from(TodoStatus)
)

interrupts: st.SearchStrategy[HitlInterrupt] = st.builds(
    HitlInterrupt,
    tool_name=st.text(max_size=20),
    tool_args=json_values,
    policy_note=st.none() | st.text(max_size=40),
    created_at=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ),
    call_id=st.none() | st.text(max_size=12),
)

snapshots: st.SearchStrategy[AgentStateSnapshot] = st.builds(
    AgentStateSnapshot,
    todos=st.lists(todos, max_size=5),
    files=st.dictionaries(st.text(max_size=16), st.text(max_size=200), max_size=5),
    scratchpad=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    pending_interrupts=st.lists(interrupts, max_size=3),
)


# -- near every limit -----------------------------------------------------------------------
#: Integers at and around every bound a reader has: 64 bits signed and unsigned, the 2**53 of
#: doubles, Python's 4,300-digit limit.
_EDGE_INTS = [
    *(MIN_INT + d for d in (-2, -1, 0, 1)),
    *(MAX_INT + d for d in (-1, 0, 1, 2)),
    *(2**63 + d for d in (-2, -1, 0, 1)),
    *(s * 2**53 + d for s in (1, -1) for d in (-1, 0, 1)),
    10**4299,
    -(10**4299),
    10**4300,
]
_EDGE_FLOATS = [
    *(0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 0.1, 1e16),
    *(1.7976931348623157e308, -1.7976931348623157e308),
    *(float("nan"), float("inf"), -float("inf")),
]
#: Text that costs more bytes as JSON than characters (escapes, 4-byte UTF-8), and the
#: characters some readers refuse.
_EDGE_TEXT = st.text(
    alphabet=st.sampled_from(
        ["a", '"', "\\", "\x00", "\x1f", "\u2028", "\u00e9", "\U0001f600", "\ud800", "\ufeff", "/"]
    ),
    max_size=40,
)


def _nested(depth: int, leaf: object, as_dict: bool) -> object:
    """``leaf`` inside ``depth`` containers (dicts or lists)."""
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


#: Containers around a leaf, near the codec's bound (MAX_JSON_DEPTH document levels: a
#: scratchpad value's own containers start at level 3) and near the parser's (201 levels).
def _deep_values() -> st.SearchStrategy[object]:
    own = MAX_JSON_DEPTH - 2
    depths = st.sampled_from([own - 1, own, own + 1, 197, 198, 199, 200, 252, 260])
    return st.builds(_nested, depths, st.sampled_from([0, "x", None, []]), st.booleans())


#: One leaf or small value near a limit.
edge_values: st.SearchStrategy[object] = st.one_of(
    st.sampled_from(_EDGE_INTS),
    st.sampled_from(_EDGE_FLOATS),
    _EDGE_TEXT,
    _deep_values(),
    json_values,
)


def near_limit_states(max_bytes: int) -> st.SearchStrategy[dict[str, Any]]:
    """Snapshots as an agent hands them in (plain mappings), near every limit: nesting
    depth, integer size, float range, text that escapes or is refused, counts, and total
    size around ``max_bytes`` (the codec's cap)."""
    # file text whose JSON lands around the cap: the fixed overhead is ~25 bytes
    sizes = st.integers(max_bytes - 64, max_bytes + 8) | st.integers(0, 64)
    big_file = sizes.map(lambda n: "y" * max(n, 0))
    when = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)),
                                   timezone(-timedelta(hours=12))]),
    )  # fmt: skip
    interrupt = st.fixed_dictionaries(
        {"type": st.just("human_in_loop"), "tool_name": _EDGE_TEXT, "tool_args": edge_values},
        optional={"created_at": when, "call_id": st.none() | _EDGE_TEXT},
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "todos": st.lists(
                st.fixed_dictionaries(
                    {"content": _EDGE_TEXT, "status": st.sampled_from(list(TodoStatus))}
                ),
                max_size=3,
            ),
            "files": st.dictionaries(_EDGE_TEXT, _EDGE_TEXT | big_file, max_size=3),
            "scratchpad": st.dictionaries(_EDGE_TEXT, edge_values, max_size=4),
            "pending_interrupts": st.lists(interrupt, max_size=2),
        },
    )


@st.composite
def _damaged(draw: st.DrawFn, records: list[bytes]) -> bytes:
    """One of ``records`` with one damage: a byte changed, cut short, or a region
    overwritten."""
    record = draw(st.sampled_from(records))
    kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
    at = draw(st.integers(0, max(len(record) - 1, 0)))
    if kind == "truncate":
        return record[:at]
    if kind == "flip":
        return record[:at] + bytes([record[at] ^ draw(st.integers(1, 255))]) + record[at + 1 :]
    return record[:at] + draw(st.binary(max_size=24)) + record[at + 24 :]


def stored_bytes(records: list[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes that may sit under a thread key: random bytes, header-like prefixes with
    random rest, and ``records`` (valid ones) with one damage each."""
    header_digits = st.text(alphabet="0123456789", min_size=20, max_size=20)
    header_like = st.builds(
        lambda kind, version, saved, body: b"AP1" + kind + version.encode() + saved + body,
        st.sampled_from([b"j", b"z", b"t", b"x"]),
        header_digits | st.just("9" * 20) | st.just("09223372036854775808"),
        st.sampled_from([b"%016d" % 1_700_000_000_000, b"9" * 16, b"0" * 16]),
        st.binary(max_size=64) | st.sampled_from([b"{}", b'{"todos":[]}', b"\x78\x9c"]),
    )
    return st.binary(max_size=200) | header_like | _damaged(records)
