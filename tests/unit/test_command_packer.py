"""The store's command packer: hiredis for small commands, large values sent as they are."""

from __future__ import annotations

import pytest
import redis
from agents_persistence.connect import CommandPacker, blocking_client
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

pytestmark = pytest.mark.unit

_REFERENCE = PythonRespSerializer(10**9, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]


def _wire(args: tuple[object, ...]) -> bytes:
    """The RESP bytes of a command, as redis-py's reference packer writes them."""
    return b"".join(_REFERENCE.pack(*args))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "ns:{a}:thread:t"),
        ("EVALSHA", "abc", 3, "k1", "k2", "k3", b"0001", b"", "t\u00e9", b"x" * 6000),
        ("SET", "k", b"x" * 6001, "PX", 60_000),
        ("EVALSHA", "abc", 1, "k", 1.5, b"y" * (1024 * 1024)),
        ("SCRIPT LOAD", "return 1"),
    ],
    ids=["small", "small-at-the-cut-off", "large", "large-last", "two-word-name"],
)
def test_the_bytes_on_the_wire_are_redis_protocol(args: tuple[object, ...]) -> None:
    assert b"".join(CommandPacker().pack(*args)) == _wire(args)


def test_a_large_value_is_sent_as_it_is_not_copied() -> None:
    record = b"AP1j" + b"z" * (1024 * 1024)
    buffers = CommandPacker().pack("SET", "k", record, "PX", 60_000)
    assert any(buffer is record for buffer in buffers)
    assert sum(map(len, buffers)) < len(record) + 100


def test_a_small_command_is_one_buffer() -> None:
    assert len(CommandPacker().pack("GET", "k")) == 1


def test_single_server_clients_get_it_unless_they_choose_an_encoding() -> None:
    def packer(client: object) -> object:
        assert isinstance(client, redis.Redis)
        return client.connection_pool.connection_kwargs.get("command_packer")

    assert isinstance(packer(blocking_client("redis://127.0.0.1:1/0")), CommandPacker)
    assert packer(blocking_client("redis://127.0.0.1:1/0?encoding=latin-1")) is None
    assert packer(blocking_client("redis://127.0.0.1:1/0", encoding="latin-1")) is None
