"""One network round trip per save and per load, counted on the wire and on the server."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from agents_persistence import AgentStateSnapshot, RedisCheckpointer

from tests.support import (
    RedisServer,
    RoundTripCounter,
    counting_connection_class,
    measure_checkpointer_round_trips,
    sample_state,
)

pytestmark = pytest.mark.redis


def test_one_round_trip_per_call_on_the_real_server(
    real_redis_url: str, namespace: str, record_property: Callable[[str, object], None]
) -> None:
    figures = measure_checkpointer_round_trips(real_redis_url, namespace)
    record_property("round_trips", figures)  # lands in --junitxml reports
    assert figures == {
        "save": 1,
        "save_large": 1,
        "load": 1,
        "load_large": 1,
        "load_missing": 1,
        "list": 1,
        "delete": 1,
        "save_many_100": 1,
    }


@pytest.mark.parametrize("size", [100, 200_000], ids=["small", "large"])
def test_a_save_is_one_compare_and_set(real_redis_url: str, namespace: str, size: int) -> None:
    """Small records go to the script as an argument; large ones are staged in the same
    MULTI/EXEC. Either way: one round trip, one EVALSHA."""
    counter = RoundTripCounter()
    store = RedisCheckpointer.from_url(
        real_redis_url, namespace=namespace, connection_class=counting_connection_class(counter)
    )
    state = AgentStateSnapshot(files={"f": secrets.token_hex(size // 2)})
    try:
        store.save_state("warm", state)  # connect and load the script
        with counter.measure() as save_trips:
            store.save_state("t", state)
        with counter.measure() as load_trips:
            loaded = store.load_state("t")
    finally:
        store.close()
    assert loaded == state
    assert len(save_trips) == 1
    (commands,) = save_trips
    assert commands.count("EVALSHA") == 1
    assert commands in (("EVALSHA",), ("MULTI", "SET", "EVALSHA", "EXEC"))
    assert load_trips == [("GET",)]


def test_server_side_command_counts(redis_server: RedisServer) -> None:
    """INFO commandstats on a private server (nobody else's commands in the figures)."""
    admin = redis_server.client()
    store = RedisCheckpointer.from_url(redis_server.url, namespace="rt")
    try:
        store.save_state("warm", sample_state())
        store.load_state("warm")
        admin.config_resetstat()
        store.save_state("t", sample_state())
        after_save = admin.info("commandstats")
        admin.config_resetstat()
        store.load_state("t")
        after_load = admin.info("commandstats")
    finally:
        store.close()

    def calls(stats: dict[str, dict[str, int]], command: str) -> int:
        return stats.get(f"cmdstat_{command}", {}).get("calls", 0)

    assert calls(after_save, "evalsha") == 1
    assert calls(after_save, "multi") == calls(after_save, "exec") <= 1
    assert calls(after_load, "get") == 1
    ours = {k for k in after_load if not k.startswith(("cmdstat_config", "cmdstat_info"))}
    assert ours == {"cmdstat_get"}
