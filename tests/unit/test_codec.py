"""The record codec: property round trips, header layout, compression and bad input."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime

import pytest
from agents_persistence import (
    AgentStateSnapshot,
    Codec,
    CorruptState,
    InvalidSnapshot,
    SnapshotTooLarge,
)
from agents_persistence.codec import HEADER_SIZE, format_version
from agents_persistence.validation import MAX_VERSION
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import SEED_JSON, sample_state
from tests.support.strategies import snapshots

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    state=snapshots,
    threshold=st.sampled_from([0, None]),
    version=st.integers(1, MAX_VERSION),
    saved_at_ms=st.integers(0, 253_402_300_799_999),  # up to 9999-12-31
)
def test_any_valid_snapshot_round_trips(
    state: AgentStateSnapshot, threshold: int | None, version: int, saved_at_ms: int
) -> None:
    codec = Codec(compress_threshold=threshold)
    body = codec.dump_json(state)
    raw = codec.pack(body, version, saved_at_ms)
    record = codec.unpack("t", raw)
    assert record.state == state
    assert record.version == version
    assert record.saved_at == datetime.fromtimestamp(saved_at_ms / 1000, tz=UTC)
    assert record.state is not None
    assert record.state.model_dump_json().encode() == body
    if threshold is None:
        assert raw[3:4] == b"j"
    assert codec.load_json(body) == state


@PROPERTY
@given(state=snapshots)
def test_json_is_what_the_rust_crate_expects(state: AgentStateSnapshot) -> None:
    data = json.loads(Codec().dump_json(state))
    assert set(data) <= {"todos", "files", "scratchpad", "pending_interrupts"}
    assert ("pending_interrupts" in data) == bool(state.pending_interrupts)
    for item in data["todos"]:
        assert item["status"] in {"pending", "in_progress", "completed"}
    for interrupt in data.get("pending_interrupts", []):
        assert interrupt["type"] == "human_in_loop"


def test_header_layout() -> None:
    body = Codec().dump_json(sample_state())
    raw = Codec(compress_threshold=None).pack(body, 42, 1_700_000_000_123)
    assert raw[:HEADER_SIZE] == b"AP1j" + b"%020d" % 42 + b"%016d" % 1_700_000_000_123
    assert raw[HEADER_SIZE:] == body
    assert format_version(7) == b"00000000000000000007"
    assert len(format_version(MAX_VERSION)) == 20


def test_compression_only_when_it_helps() -> None:
    codec = Codec(compress_threshold=0)
    big = codec.dump_json(sample_state(size=5000))
    packed = codec.pack(big, 1, 0)
    assert packed[3:4] == b"z"
    assert zlib.decompress(packed[HEADER_SIZE:]) == big
    tiny = b"{}"
    assert codec.pack(tiny, 1, 0)[3:4] == b"j"  # zlib would make it longer
    below = Codec(compress_threshold=len(big) + 1)
    assert below.pack(big, 1, 0)[3:4] == b"j"


def test_tombstone_record_has_no_state() -> None:
    record = Codec().unpack("t", b"AP1t" + b"%020d" % 9 + b"%016d" % 0)
    assert (record.version, record.state) == (9, None)


def test_plain_rust_json_is_version_0() -> None:
    record = Codec().unpack("t", SEED_JSON.encode())
    assert (record.version, record.saved_at) == (0, None)
    assert record.state == AgentStateSnapshot.model_validate_json(SEED_JSON)
    assert Codec().unpack("t", b"  \n" + SEED_JSON.encode()).version == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"AP1j123",
        b"AP9j" + b"0" * 36 + b"{}",
        b"AP1z" + b"0" * 36 + b"not zlib",
        b"AP1j" + b"0" * 36 + b"{not json",
        b"AP1x" + b"0" * 36 + b"{}",
        b"AP1j" + b"x" * 36 + b"{}",
        b"AP1j" + b"0" * 19 + b"1" + b"9" * 16 + b"{}",  # saved_at beyond year 9999
        b"",
    ],
)
def test_undecodable_records_are_corrupt_state(raw: bytes) -> None:
    with pytest.raises(CorruptState) as info:
        Codec().unpack("the-thread", raw)
    assert info.value.thread_id == "the-thread"
    assert "'the-thread'" in str(info.value)


def test_dump_json_refuses_non_finite_numbers() -> None:
    state = AgentStateSnapshot.model_construct(
        todos=[], files={}, scratchpad={"x": float("inf")}, pending_interrupts=[]
    )
    with pytest.raises(InvalidSnapshot, match="NaN or Infinity"):
        Codec().dump_json(state)


def test_the_word_nan_inside_a_string_is_fine() -> None:
    state = AgentStateSnapshot(files={"NaN": "Infinity and NaN"})
    assert Codec().load_json(Codec().dump_json(state)) == state


def test_size_cap_on_both_sides() -> None:
    codec = Codec(max_snapshot_bytes=100)
    with pytest.raises(SnapshotTooLarge):
        codec.dump_json(sample_state(size=200))
    with pytest.raises(SnapshotTooLarge):
        codec.load_json(b"{" + b" " * 200 + b"}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1]", "must be an object"),
        (b'{"todos": 1}', "invalid snapshot"),
        (b'{"scratchpad": {"x": NaN}}', "NaN or Infinity"),
        (b'{"files": {"a": "\xff"}}', "not valid JSON"),
    ],
)
def test_load_json_refuses_bad_messages(body: bytes, message: str) -> None:
    with pytest.raises(InvalidSnapshot, match=message):
        Codec().load_json(body)
