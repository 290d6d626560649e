"""The record codec: property round trips, header layout, compression and bad input."""

from __future__ import annotations

import json
import tracemalloc
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import pytest
import zstandard
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

from tests.catalogue.cases import zstd_bomb
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


@pytest.mark.parametrize(
    ("compression", "kind", "inflate"),
    [
        ("zstd", b"s", lambda b: zstandard.ZstdDecompressor().decompress(b)),
        ("zlib", b"z", zlib.decompress),
    ],
)
def test_compression_only_when_it_helps(
    compression: Literal["zstd", "zlib"], kind: bytes, inflate: Callable[[bytes], bytes]
) -> None:
    codec = Codec(compress_threshold=0, compression=compression)
    big = codec.dump_json(sample_state(size=5000))
    packed = codec.pack(big, 1, 0)
    assert packed[3:4] == kind
    assert inflate(packed[HEADER_SIZE:]) == big
    assert Codec().unpack("t", packed).state == sample_state(size=5000)  # any codec reads it
    tiny = b"{}"
    assert codec.pack(tiny, 1, 0)[3:4] == b"j"  # compressed it would be longer
    below = Codec(compress_threshold=len(big) + 1, compression=compression)
    assert below.pack(big, 1, 0)[3:4] == b"j"


def test_zstd_is_the_default_above_16_kib() -> None:
    codec = Codec()
    assert codec.compression == "zstd"
    big = codec.dump_json(sample_state(size=64 * 1024))
    packed = codec.pack(big, 3, 5)
    assert packed[3:4] == b"s"
    assert len(packed) < len(big) / 2
    small = codec.dump_json(sample_state(size=1000))
    assert codec.pack(small, 3, 5)[3:4] == b"j"


def test_zlib_records_are_read_by_a_zstd_codec() -> None:
    """Records written with zlib (before zstd was the default) load forever."""
    body = Codec().dump_json(sample_state(size=40_000))
    old = b"AP1z" + format_version(8) + b"%016d" % 1_700_000_000_000 + zlib.compress(body, 1)
    record = Codec().unpack("t", old)
    assert (record.version, record.state) == (8, sample_state(size=40_000))


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression must be one of"):
        Codec(compression="lz4")  # type: ignore[arg-type]


def _zstd_record(frame: bytes) -> bytes:
    return b"AP1s" + format_version(5) + b"%016d" % 1_700_000_000_000 + frame


def _peak_of(codec: Codec, raw: bytes, match: str) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptState, match=match):
            codec.unpack("bomb", raw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_zstd_frame_stating_a_size_beyond_the_cap_is_refused_before_allocating() -> None:
    """A frame whose header states 200 MiB: refused from the header, nothing allocated."""
    codec = Codec(max_snapshot_bytes=64 * 1024)
    raw = _zstd_record(zstd_bomb(200 * 1024 * 1024))
    assert len(raw) < 64 * 1024
    peak = _peak_of(codec, raw, "inflates beyond")
    assert peak < 64 * 1024, peak


def test_a_zstd_frame_of_unstated_size_inflates_at_most_to_the_limit() -> None:
    """A streaming frame (no size in its header) of 200 MiB: decoded into at most the load
    limit, then CorruptState."""
    codec = Codec(max_snapshot_bytes=64 * 1024)
    raw = _zstd_record(zstd_bomb(200 * 1024 * 1024, states_size=False))
    peak = _peak_of(codec, raw, "inflates beyond")
    assert peak < 3 * codec.load_limit, peak
    within = zstd_bomb(32 * 1024, states_size=False, prefix=b'{"files":{"a":"')
    assert Codec().unpack("t", _zstd_record(within)).state is not None


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"not zstd at all", id="not-zstd"),
        pytest.param(zstandard.ZstdCompressor().compress(b'{"todos":[]}')[:-3], id="truncated"),
        pytest.param(zstandard.ZstdCompressor().compress(b'{"todos":[]}') + b"xx", id="trailer"),
        pytest.param(zstandard.ZstdCompressor().compress(b"{not json"), id="not-json"),
        pytest.param(b"", id="empty"),
    ],
)
def test_bad_zstd_bodies_are_corrupt_state(frame: bytes) -> None:
    with pytest.raises(CorruptState) as info:
        Codec().unpack("the-thread", _zstd_record(frame))
    assert info.value.thread_id == "the-thread"


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


def test_settings_choose_the_compression() -> None:
    """``AGENTS_PERSISTENCE_COMPRESSION=zlib`` writes zlib records (for readers of releases
    before zstd); the default writes zstd."""
    from agents_persistence.config.settings import Settings

    body = Codec().dump_json(sample_state(size=40_000))
    for name, kind in (("zlib", b"z"), ("zstd", b"s")):
        codec = Settings(_env_file=None, compression=name).build_codec()
        assert codec.pack(body, 1, 0)[3:4] == kind
    assert Settings(_env_file=None).build_codec().compression == "zstd"
