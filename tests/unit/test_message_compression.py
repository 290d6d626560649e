"""Task message bodies in zstd: what the layer's apps publish, and what a worker inflates."""

from __future__ import annotations

import json
import tracemalloc
import zlib

import pytest
import zstandard
from agents_persistence.config.settings import Settings
from agents_persistence.tasks import create_app
from agents_persistence.tasks.protocol.compression import (
    MESSAGE_COMPRESSION,
    CompressedBodyRefused,
    bounded_decompressor,
    install_message_compression,
    message_body_limit,
)
from agents_persistence.tasks.worker.app import celery_config
from agents_persistence.tasks.worker.consumer import refuse_decompression
from kombu import Producer, compression

from tests.catalogue.cases import zstd_bomb
from tests.catalogue.test_consumer_holds import World, world  # noqa: F401 (a fixture)

pytestmark = pytest.mark.unit

_LIMIT = 64 * 1024


def test_apps_publish_zstd_and_accept_only_json() -> None:
    config = celery_config(Settings(_env_file=None))
    assert config["task_compression"] == "zstd"
    assert config["accept_content"] == ["json"]
    create_app(Settings(_env_file=None))
    body = json.dumps([[], {"namespace": "ns", "state": "x" * 5000}, {}]).encode()
    packed, content_type = compression.compress(body, "zstd")
    assert content_type == MESSAGE_COMPRESSION
    assert len(packed) < len(body) / 10
    assert zstandard.frame_content_size(packed) == len(body)  # the size a worker checks first
    assert compression.decompress(packed, content_type) == body


def test_the_limit_covers_a_batch_at_its_caps_escaped_the_worst_way() -> None:
    settings = Settings(_env_file=None)
    limit = message_body_limit(settings.max_snapshot_bytes, settings.batch_max_bytes)
    assert limit >= 6 * max(settings.max_snapshot_bytes, settings.batch_max_bytes)
    assert limit < 200 * 1024 * 1024


def test_a_frame_stating_a_size_beyond_the_limit_is_refused_before_allocating() -> None:
    bomb = zstd_bomb(200 * 1024 * 1024)
    assert len(bomb) < 64 * 1024
    decompress = bounded_decompressor(_LIMIT)
    tracemalloc.start()
    try:
        with pytest.raises(CompressedBodyRefused, match="beyond the limit"):
            decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < _LIMIT, peak


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (zstd_bomb(2 * 1024 * 1024, states_size=False), "does not state its size"),
        (zstandard.ZstdCompressor().compress(b"[]") + b"xx", "does not inflate"),
        (zstandard.ZstdCompressor().compress(b"[1, 2, 3]")[:-2], "does not inflate"),
        (b"not zstd", "zstd body of 8 bytes"),
        (zlib.compress(b"[]"), "zstd body of"),
    ],
    ids=["unstated-size", "trailing-bytes", "truncated", "not-zstd", "zlib"],
)
def test_bodies_that_are_not_one_bounded_frame_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(CompressedBodyRefused, match=reason):
        bounded_decompressor(_LIMIT)(body)


def test_a_worker_inflates_zstd_within_its_bound_and_nothing_else() -> None:
    install_message_compression(_LIMIT)
    try:
        refuse_decompression()
        body = b'[[], {"a": 1}, {}]'
        packed, content_type = compression.compress(body, "zstd")
        assert compression.decompress(packed, content_type) == body
        with pytest.raises(CompressedBodyRefused, match="beyond the limit"):
            compression.decompress(zstd_bomb(1024 * 1024), content_type)
        with pytest.raises(CompressedBodyRefused, match="refused"):
            compression.decompress(zlib.compress(body), "application/x-gzip")
    finally:
        settings = Settings(_env_file=None)
        install_message_compression(
            message_body_limit(settings.max_snapshot_bytes, settings.batch_max_bytes)
        )


def test_a_held_zstd_message_is_copied_compressed_again(world: World) -> None:  # noqa: F811
    """A zstd message the worker must dead-letter while the list cannot be written: kombu
    inflated it, so its copy is compressed again (header and body agree), and the copy,
    delivered once the list is back, is dead-lettered like the original would have been."""
    body = b'[[], {"namespace": "x"}, {}]'
    world.break_list("wrongtype")
    Producer(world.conn).publish(
        body,
        exchange=world.queue.exchange,
        routing_key=world.queue.routing_key,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"id": "held-zstd", "lang": "py", "task": "agents_persistence.no_such_task"},
        compression="zstd",
    )
    original = world.take()
    assert original.headers["compression"] == MESSAGE_COMPRESSION
    assert original.body == body  # inflated by kombu on arrival
    world.deliver(original)
    world.fire()
    assert original._state == "ACK"
    copy = world.take()
    assert copy.headers["compression"] == MESSAGE_COMPRESSION
    assert not copy.errors
    assert copy.body == body
    world.fix_list("wrongtype")
    world.consumer._pushes_paused_until = 0.0
    world.deliver(copy)
    [entry] = world.dead_letters()
    assert "unknown task" in entry["reason"], entry
