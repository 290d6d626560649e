"""Catalogue, class 7 (store side): permanent store errors told apart from outages.

A dead-letter list key that holds another Redis type (``WRONGTYPE``) is an operator's
mistake no retry fixes: :class:`StoreMisconfigured`, naming the key, from every call on the
list (the CLI prints it as one line). A server out of memory under ``noeviction`` (``OOM``)
is :class:`StoreFull`, a kind of :class:`StoreUnavailable`: transient, raised at once (no
quick retries), so the worker treats it as an outage and gives the message back; loads go
on, and saves resume once memory frees up.

At the worker, a message to dead-letter into such a list is held in the broker: re-published
with the longest retry countdown (its retry count unchanged), one CRITICAL log a minute per
process naming the key and the fix; a batch holds only its entries that could not be
dead-lettered. Real workers: ``tests/faults/test_dead_letter_misconfigured.py``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import fakeredis
import pytest
from agents_persistence import (
    RedisCheckpointer,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
)
from agents_persistence.config import Settings
from agents_persistence.retry import RetryPolicy
from agents_persistence.tasks.cli.main import main
from agents_persistence.tasks.protocol.messages import save_entry
from agents_persistence.tasks.protocol.names import SAVE_BATCH_TASK, SAVE_TASK
from agents_persistence.tasks.worker import handlers
from agents_persistence.tasks.worker.app import create_app
from agents_persistence.tasks.worker.dead_letters import DeadLetters, make_entry
from celery.canvas import Signature
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from tests.support import RedisServer, sample_state
from tests.support.celery_worker import settings_env
from tests.unit.test_handlers import MAX_RETRIES, PAUSE, World


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


# -- the worker, when the dead-letter list's key holds another type ----------------------------
@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The handler tests' delivery harness (fakeredis store, ``memory://`` broker), its
    dead-letter key holding a string, and a fresh CRITICAL throttle."""
    monkeypatch.setattr(handlers, "_REQUEUE_PAUSE", PAUSE)
    monkeypatch.setattr(handlers, "_misconfigured_reports", handlers.LogThrottle(60.0))
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None, eager=False, broker_url="memory://", namespace=f"wt-{tag}",
        queue=f"wt-{tag}", task_max_retries=MAX_RETRIES, retry_attempts=1,
        retry_initial_backoff_seconds=0.001, retry_max_backoff_seconds=0.001,
        retry_deadline_seconds=0.05, task_retry_backoff_max_seconds=40.0,
    )  # fmt: skip
    server = fakeredis.FakeServer()
    store = RedisCheckpointer(
        fakeredis.FakeRedis(server=server),
        namespace=settings.namespace,
        retry=RetryPolicy(attempts=1, initial_backoff=0.001, max_backoff=0.001, deadline=0.05),
    )
    store.client.set(store.keys.dead_letters, "an operator's string")
    app = create_app(settings, store=store)
    try:
        yield World(app, store, server, settings)
    finally:
        app.close()
        store.close()


def _criticals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]


def _bad_save(world: World, thread_id: str) -> dict[str, Any]:
    return {**world.save_kwargs(thread_id, 5), "state": "{not json"}


@pytest.mark.unit
def test_log_throttle_lets_one_report_a_period_through() -> None:
    now = [100.0]
    throttle = handlers.LogThrottle(60.0, clock=lambda: now[0])
    assert throttle.due("k") == 0
    assert [throttle.due("k") for _ in range(3)] == [None, None, None]
    assert throttle.due("other") == 0  # each key has its own period
    now[0] += 59.9
    assert throttle.due("k") is None
    now[0] += 0.2
    assert throttle.due("k") == 4  # the ones held back since the last report
    assert throttle.due("k") is None


@pytest.mark.unit
def test_worker_holds_a_message_it_cannot_dead_letter(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid save, the dead-letter key a string: not acked undecided, not spun on. It
    is re-published with the longest countdown and its retry count unchanged (so holding
    it never uses up its retries), one CRITICAL names the key and the fix however often it
    happens; once the key is deleted, the re-published message is dead-lettered."""
    caplog.set_level(logging.CRITICAL, logger=handlers.__name__)
    kwargs = _bad_save(world, "t-bad")
    for _ in range(3):
        channel = world.deliver(SAVE_TASK, kwargs, retries=MAX_RETRIES)
        assert channel.acked  # its copy is in the broker: the outcome is durable
        [(headers, held)] = world.published()
        assert headers["retries"] == MAX_RETRIES  # not counted against task_max_retries
        assert held == kwargs
        eta = datetime.fromisoformat(headers["eta"])
        wait = (eta - datetime.now(eta.tzinfo)).total_seconds()
        assert 15.0 <= wait <= 40.0  # [cap / 2, cap]: the longest retry countdown
    [critical] = _criticals(caplog)
    key = world.store.keys.dead_letters
    assert f"DEL {key}" in critical
    assert f"RENAME {key}" in critical
    assert world.store.client.get(key) == b"an operator's string"  # left as it was

    world.store.client.delete(key)  # the operator's fix
    assert world.deliver(SAVE_TASK, held, retries=MAX_RETRIES).acked
    [entry] = world.dead_letters()
    assert (entry["error"], entry["kwargs"]["thread_id"]) == ("InvalidSnapshot", "t-bad")
    assert world.published() == []


@pytest.mark.unit
def test_worker_gives_a_held_message_back_if_it_cannot_re_publish(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise OperationalError("broker gone")

    monkeypatch.setattr(Signature, "apply_async", refuse)
    began = time.monotonic()

    channel = world.deliver(SAVE_TASK, _bad_save(world, "t-bad"))

    assert channel.given_back
    assert time.monotonic() - began >= PAUSE  # not handed straight back to a spinning loop


@pytest.mark.unit
def test_a_batch_holds_only_the_entries_it_cannot_dead_letter(world: World) -> None:
    """A batch with a bad entry, the dead-letter key a string: the good entries are
    written, the batch is acked only once a batch of the bad entry alone is re-published;
    that one, delivered after the fix, dead-letters the entry as a single save."""
    good = save_entry(world.store.prepare("t-1", sample_state("t-1@5"), version=5))
    bad = {**good, "thread_id": "t-2", "state": "{not json"}
    kwargs = {"namespace": world.store.namespace, "entries": [good, bad]}

    assert world.deliver(SAVE_BATCH_TASK, kwargs, retries=2).acked

    assert world.store.stored_versions(["t-1", "t-2"]) == {"t-1": 5, "t-2": 0}
    [(headers, held)] = world.published()
    assert headers["retries"] == 2
    assert held == {"namespace": world.store.namespace, "entries": [bad]}
    world.store.client.delete(world.store.keys.dead_letters)
    assert world.deliver(SAVE_BATCH_TASK, held, retries=2).acked
    [entry] = world.dead_letters()
    assert (entry["task"], entry["batch"], entry["kwargs"]["thread_id"]) == (
        SAVE_TASK,
        True,
        "t-2",
    )


@pytest.mark.unit
def test_an_eager_call_surfaces_the_misconfigured_key(world: World) -> None:
    """Inline (eager), there is no broker to hold the message in: the caller gets the
    error, naming the key."""
    with pytest.raises(StoreMisconfigured) as info:
        world.app.tasks[SAVE_TASK].apply(kwargs=_bad_save(world, "t-bad"), throw=True)
    assert info.value.key == world.store.keys.dead_letters
