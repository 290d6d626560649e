"""Values of every size through the store's client and command packer, on a real server."""

from __future__ import annotations

import pytest
from agents_persistence.connect import blocking_client

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("size", [0, 10, 6000, 6001, 70_000, 1024 * 1024 + 7])
def test_a_value_reads_back_byte_for_byte(real_redis_url: str, namespace: str, size: int) -> None:
    client = blocking_client(real_redis_url)
    value = bytes(range(256)) * (size // 256) + b"\r\n$*"[: size % 256]
    try:
        pipe = client.pipeline(transaction=True)
        pipe.set(f"{namespace}:v", value, px=60_000)
        pipe.set(f"{namespace}:small", "t\u00e9", px=60_000)
        pipe.execute()
        assert client.get(f"{namespace}:v") == value
        assert client.strlen(f"{namespace}:v") == len(value)
        assert client.get(f"{namespace}:small") == "t\u00e9".encode()
    finally:
        client.close()
