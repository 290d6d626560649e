"""Catalogue, class 7 (store side): permanent store errors told apart from outages.

A dead-letter list key that holds another Redis type (``WRONGTYPE``) is an operator's
mistake no retry fixes: :class:`StoreMisconfigured`, naming the key, from every call on the
list (the CLI prints it as one line). A server out of memory under ``noeviction`` (``OOM``)
is :class:`StoreFull`, a kind of :class:`StoreUnavailable`: transient, raised at once (no
quick retries), so the worker treats it as an outage and gives the message back; loads go
on, and saves resume once memory frees up.
"""

from __future__ import annotations

import uuid
from typing import Any

import fakeredis
import pytest
from agents_persistence import (
    RedisCheckpointer,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
)
from agents_persistence.tasks.cli.main import main
from agents_persistence.tasks.worker.dead_letters import DeadLetters, make_entry
from click.testing import CliRunner

from tests.support import RedisServer, sample_state
from tests.support.celery_worker import settings_env


@pytest.mark.unit
def test_dead_letter_key_of_wrong_type() -> None:
    """A string where the dead-letter list belongs: push, list, count and purge raise
    StoreMisconfigured naming the key (never a bare ResponseError, never retried)."""
    store = RedisCheckpointer(fakeredis.FakeRedis(), namespace="wt")
    store.client.set(store.keys.dead_letters, "an operator's string")
    letters = DeadLetters(store.dead_letter_list(100))
    with pytest.raises(StoreMisconfigured) as info:
        letters.push(make_entry("bad", "BadMessage"))
    assert info.value.key == "wt:deadletter"
    for call in (letters.list, letters.count):
        with pytest.raises(StoreMisconfigured):
            call()
    assert store.client.get(store.keys.dead_letters) == b"an operator's string"


@pytest.mark.redis
def test_dead_letters_cli_on_a_wrong_type_key(redis_server: RedisServer) -> None:
    """``dead-letters list`` on such a key: exit 1 with one line naming the key, no
    traceback."""
    namespace = f"wt-{uuid.uuid4().hex[:6]}"
    redis_server.client().set(f"{namespace}:deadletter", "x")
    env = settings_env(redis_url=redis_server.url, namespace=namespace)
    result = CliRunner().invoke(main, ["dead-letters", "list"], env=env)
    assert result.exit_code == 1
    assert "StoreMisconfigured" in result.output
    assert f"{namespace}:deadletter" in result.output
    assert "Traceback" not in result.output


@pytest.mark.redis
def test_out_of_memory_is_store_full(redis_server_factory: Any) -> None:
    """A private server at maxmemory with noeviction: a save, a batch, a delete and a
    dead-letter push raise StoreFull (a StoreUnavailable); a load still answers; once memory
    is freed, the save is written."""
    server = redis_server_factory(extra_args=["--maxmemory-policy", "noeviction"])
    store = RedisCheckpointer.from_url(server.url, namespace="oom")
    store.save_state("kept", sample_state("kept"))
    raw = server.client()
    raw.set("fill", b"x" * 2_000_000)
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory", used // 2)  # well below what is held: every write refused
    saves = [store.prepare(f"b{i}", sample_state("b")) for i in range(3)]
    for attempt in (
        lambda: store.save_state("t", sample_state("t")),
        lambda: store.save_many(saves),
        lambda: store.delete_thread("kept"),
        lambda: store.dead_letter_list(10).push(b"{}"),
    ):
        with pytest.raises(StoreFull) as info:
            attempt()
        assert isinstance(info.value, StoreUnavailable)
    assert store.load_state("kept") == sample_state("kept")
    raw.config_set("maxmemory", 0)
    assert store.save_state("t", sample_state("t")).written
    store.close()
