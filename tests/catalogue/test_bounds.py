"""Catalogue, class 8: bounds on what callers and operators give.

Passwords in every URL form stay out of reprs, errors and CLI output (and a broker URL with
``?password=`` starts a worker); the namespace rule is anchored; thread ids with invisible,
bidi or separator characters are refused; TTLs stay inside what Redis and the index can
hold; a batch entry that is not an object spoils no neighbour; a large batch is written in
bounded transactions; a listing page is bounded.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from agents_persistence import (
    InMemoryCheckpointer,
    InvalidInput,
    InvalidThreadId,
    RedisCheckpointer,
)
from agents_persistence.base import MAX_PAGE_SIZE
from agents_persistence.config import Settings, redact_url
from agents_persistence.keys import Keys
from agents_persistence.redis_store import CHUNK_SAVES
from agents_persistence.tasks import SAVE_BATCH_TASK, CeleryCheckpointer, create_app
from agents_persistence.tasks.cli.main import main
from agents_persistence.tasks.protocol.messages import parse_save
from agents_persistence.tasks.worker.app import celery_config
from agents_persistence.validation import MAX_TTL_SECONDS, check_namespace
from click.testing import CliRunner
from pydantic import ValidationError

from tests.catalogue.cases import INVISIBLE_THREAD_IDS
from tests.catalogue.conftest import Agent, Served
from tests.support import RedisServer, sample_state
from tests.support.celery_worker import CeleryWorker, settings_env

SECRET = "q-Secr3t"
QUERY_URL = f"redis://127.0.0.1:1/0?password={SECRET}"


def _shown_by(where: str) -> str:
    """What ``where`` shows of settings whose URLs carry the password in their query."""
    if where == "redact-url":
        return redact_url(f"redis://u:{SECRET}@h:1/0?sentinel_password={SECRET}&db=1")
    if where == "repr":
        return repr(Settings(redis_url=QUERY_URL, broker_url=QUERY_URL))
    if where == "validation-error":
        try:
            Settings(redis_url=f"redis://127.0.0.1:99999/0?password={SECRET}")
        except ValidationError as exc:
            return f"{exc} {exc.errors()} {exc.json()}"
        raise AssertionError("not refused")
    env = {"AGENTS_PERSISTENCE_REDIS_URL": QUERY_URL}
    command = ["stats"]
    if where == "cli-option":
        command = ["--redis-url", QUERY_URL, "dead-letters", "list"]
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code == 1, result.output
    return result.output


@pytest.mark.unit
@pytest.mark.parametrize(
    "where", ["redact-url", "repr", "validation-error", "cli-error", "cli-option"]
)
def test_password_in_url_query_never_shown(where: str) -> None:
    """``?password=`` (and any query key naming a secret) is replaced by ``***`` wherever a
    URL is shown: reprs, validation errors (str, errors(), json()), CLI error lines."""
    shown = _shown_by(where)
    assert SECRET not in shown
    if where in {"redact-url", "repr", "validation-error"}:
        assert "***" in shown


@pytest.mark.unit
def test_broker_url_password_in_query_reaches_kombu() -> None:
    """Celery gets the broker URL with the password in its user info (kombu raises
    TypeError at worker start for ``?password=``); redis-py reads either form. A password
    given twice, or a query key kombu sets itself, is refused when settings are read."""
    config = celery_config(Settings(broker_url=f"redis://127.0.0.1:6379/0?password={SECRET}"))
    assert config["broker_url"] == f"redis://:{SECRET}@127.0.0.1:6379/0"
    for url in (f"redis://:{SECRET}@h/0?password={SECRET}", "redis://h/0?userid=x"):
        with pytest.raises(ValidationError) as info:
            Settings(broker_url=url)
        assert SECRET not in str(info.value.errors())


@pytest.mark.integration
def test_worker_starts_with_password_in_url_query(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    """A worker whose store and broker URL carry ``?password=`` (a password-protected
    private redis-server) starts and stores a hand-off; its log never shows the password."""
    server: RedisServer = redis_server_factory(requirepass=SECRET)
    url = f"redis://127.0.0.1:{server.port}/0?password={SECRET}"
    namespace = f"pw-{uuid.uuid4().hex[:6]}"
    worker = CeleryWorker(settings_env(redis_url=url, namespace=namespace), directory=tmp_path)
    settings = Settings(redis_url=url, namespace=namespace)
    store = RedisCheckpointer.from_settings(settings)
    client = CeleryCheckpointer(store, create_app(settings, store=store))
    try:
        worker.start()
        client.save_state("t", sample_state("t")).wait(timeout=30)
        assert store.load_state("t") == sample_state("t")
        assert SECRET not in worker.log_tail(200)
    finally:
        worker.stop()
        client.close()


@pytest.mark.unit
@pytest.mark.parametrize("namespace", ["nsB\n", "nsB\r\n", "\nnsB", "ns\nB"])
def test_namespace_pattern_anchored(namespace: str) -> None:
    """A namespace with a newline anywhere (``$`` matched before a final one) is refused by
    the rule, the keys, the stores and the settings."""
    with pytest.raises(ValueError, match="namespace"):
        check_namespace(namespace)
    with pytest.raises(ValueError, match="namespace"):
        Keys(namespace)
    with pytest.raises(ValueError, match="namespace"):
        InMemoryCheckpointer(namespace=namespace)
    with pytest.raises(ValidationError):
        Settings(namespace=namespace)


@pytest.mark.redis
@pytest.mark.parametrize(
    "thread_id", list(INVISIBLE_THREAD_IDS.values()), ids=list(INVISIBLE_THREAD_IDS)
)
def test_invisible_thread_ids_refused(agent: Agent, thread_id: str) -> None:
    """Invisible, bidi and separator characters (Unicode Cf, Zl, Zp): InvalidThreadId at
    the agent (save, load, delete: nothing enqueued) and in a message at the worker."""
    with pytest.raises(InvalidThreadId):
        agent.client.save_state(thread_id, sample_state())
    with pytest.raises(InvalidThreadId):
        agent.client.load_state(thread_id)
    with pytest.raises(InvalidThreadId):
        agent.client.delete_thread(thread_id)
    agent.assert_untouched()
    save = agent.store.prepare("ok", sample_state())
    message = {"namespace": agent.store.namespace, "thread_id": thread_id,
               "version": save.version, "state": save.body.decode(), "saved_at_ms": 1}  # fmt: skip
    with pytest.raises(InvalidThreadId):
        parse_save((), message, namespace=agent.store.namespace, codec=agent.store.codec)
    agent.assert_still_serving()


@pytest.mark.redis
@pytest.mark.parametrize("field", ["ttl", "tombstone_ttl"])
def test_ttl_bounded(redis_server: RedisServer, field: str) -> None:
    """``1e17`` s (Redis refused the expiry after writing the record: no TTL, no index
    entry) is refused by settings and stores; the longest TTL (100 years) leaves a record
    that expires and an index entry that says when."""
    given: dict[str, Any] = {f"{field}_seconds": 1e17}
    with pytest.raises(ValidationError):
        Settings(**given)
    ttls: dict[str, Any] = {field: 1e17}
    with pytest.raises(ValueError, match="100 years"):
        RedisCheckpointer.from_url(redis_server.url, **ttls)
    ttls[field] = MAX_TTL_SECONDS
    store = RedisCheckpointer.from_url(redis_server.url, **ttls)
    store.save_state("t", sample_state())
    if field == "tombstone_ttl":
        store.delete_thread("t")
    key = store.keys.thread("t")
    assert store.client.pttl(key) > (MAX_TTL_SECONDS - 60) * 1000
    score = store.client.zscore(store.keys.index_of(store.keys.shard("t")), "t")
    if field == "ttl":
        assert score is not None
        assert math.isfinite(score)
    store.close()


@pytest.mark.integration
@pytest.mark.redis
def test_batch_with_a_non_object_entry(served: Served) -> None:
    """A batch whose middle entry is ``5``: that entry alone is dead-lettered (BadMessage,
    kept as ``entry``); its neighbours are written."""
    ns = served.settings.namespace
    entries: list[Any] = [
        {k: v for k, v in served.good_message(f"obj-{i}", 5).items() if k != "namespace"}
        for i in range(2)
    ]
    entries.insert(1, 5)
    before = len(served.letters())
    served.send(SAVE_BATCH_TASK, kwargs={"namespace": ns, "entries": entries})
    (entry,) = served.new_letters_after(before)
    assert entry["error"] == "BadMessage"
    assert entry["kwargs"] == {"namespace": ns, "entry": 5}
    served.still_serving()
    assert served.store.stored_versions(["obj-0", "obj-1"]) == {"obj-0": 5, "obj-1": 5}


def _exec_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


@pytest.mark.redis
def test_large_batch_written_in_bounded_transactions(redis_server: RedisServer) -> None:
    """30,000 saves in one ``save_many`` (one batch message): every one written, in
    transactions of at most 500 saves (60 EXECs), so no single command holds Redis for the
    whole batch (one EXEC of 30,000 held it ~0.3-1.4 s here)."""
    store = RedisCheckpointer.from_url(redis_server.url, namespace="big")
    saves = [store.prepare(f"t{i}", sample_state("s")) for i in range(30_000)]
    store.save_state("warm", sample_state("w"))  # the script is loaded: no NOSCRIPT rerun
    before = _exec_calls(redis_server)
    started = time.monotonic()
    results = store.save_many(saves)
    assert time.monotonic() - started < 120
    assert all(not isinstance(r, Exception) and r.written for r in results)
    assert _exec_calls(redis_server) - before == 30_000 // CHUNK_SAVES
    assert store.count_threads() == (30_001, 0)
    store.close()


@pytest.mark.unit
def test_listing_page_size_bounded() -> None:
    """A page above 10,000 entries (one command each; 100,000 held Redis ~0.1-0.4 s) is
    refused with InvalidInput by every store and by the CLI; 10,000 is served."""
    store = InMemoryCheckpointer()
    store.save_state("t", sample_state())
    with pytest.raises(InvalidInput, match="page_size"):
        next(store.iter_threads(page_size=MAX_PAGE_SIZE + 1))
    assert list(store.iter_threads(page_size=MAX_PAGE_SIZE)) == ["t"]
    result = CliRunner().invoke(main, ["list", "--page-size", str(MAX_PAGE_SIZE + 1)])
    assert result.exit_code == 2
    assert "page-size" in result.output
