"""agents_persistence.tasks.protocol.json_decoder: the orjson decoder gives exactly what kombu's
JSON decoder gives."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest
from agents_persistence.tasks.protocol.json_decoder import install_json_decoder
from agents_persistence.tasks.protocol.json_decoder import loads as fast_loads
from hypothesis import given
from hypothesis import strategies as st
from kombu.serialization import dumps, loads
from kombu.utils import json as kombu_json

pytestmark = pytest.mark.unit


def _outcome(fn: Any, data: Any) -> tuple[str, str]:
    try:
        value = fn(data)
    except Exception as exc:
        return ("error", type(exc).__name__)
    return ("ok", repr(value) + type(value).__name__)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": NaN, "b": Infinity}',
        '{"a": 1, "a": 2}',
        b'[1, {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"}]',
        kombu_json.dumps(
            {
                "d": datetime.datetime(2020, 1, 1),
                "u": uuid.UUID(int=7),
                "x": decimal.Decimal("1.5"),
                "b": b"raw",
            }
        ),
        b'{"x": 123456789012345678901234567890}',
        b"[18446744073709551615, 18446744073709551616, -9223372036854775809, 9.3e18]",
        '["\\ud800"]',
        "[1.5e300, -0.0, 1e-320]",
        '{"__type__": 1}',
        b"\xef\xbb\xbf{}",
        b"{} x",
        b"",
        b'"\xff"',
        "[" * 2000 + "]" * 2000,
        memoryview(b'{"m": [1, 2]}'),
    ],
)
def test_same_result_as_kombu(data: Any) -> None:
    assert _outcome(fast_loads, data) == _outcome(kombu_json.loads, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_same_result_for_any_json(value: Any) -> None:
    text = kombu_json.dumps(value)
    assert _outcome(fast_loads, text) == _outcome(kombu_json.loads, text)


def test_installed_for_application_json_only_json_accepted() -> None:
    install_json_decoder()
    content_type, encoding, data = dumps({"k": [1, "v"]}, serializer="json")
    assert content_type == "application/json"
    assert loads(data, content_type, encoding, accept={"application/json"}) == {"k": [1, "v"]}
    with pytest.raises(Exception, match="untrusted"):
        loads(data, content_type, encoding, accept={"application/x-python-serialize"})
