"""``agents-persistence doctor``: what in a deployment would lose or stall hand-offs.

Each check says what it found, and when something is wrong, how to fix it. The command
exits with 1 when any check fails, so it can gate a deployment or run as a probe.

The checks: the store answers; it refuses writes under memory pressure instead of evicting
(``maxmemory-policy noeviction``); it keeps data across a restart or failover (AOF, or a
connected replica); the broker answers; RabbitMQ takes the queue's declaration (no classic
queue met with ``queue_type`` quorum, or the other way round); a worker answers ``celery
inspect ping`` and consumes the namespace's queue; the broker's visibility timeout
outlasts a task with its retry countdown; tombstones outlive every redelivery; and this
machine's clock agrees with the store's (versions are clock-based across processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click
from agents_persistence.config.settings import Settings, redact_url
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.broker.queues import SWITCH_FIX, declare_problem
from agents_persistence.tasks.cli.context import Context, pass_context
from agents_persistence.tasks.worker.app import PersistenceApp
from rich.markup import escape

__all__ = ["MAX_CLOCK_SKEW_SECONDS", "Check", "doctor", "run_checks"]

#: Largest clock difference between this machine and the store tolerated.
MAX_CLOCK_SKEW_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``ok``, what was found (``detail``) and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(
    settings: Settings, store: RedisCheckpointer, app: PersistenceApp, *, timeout: float = 3.0
) -> Iterator[Check]:
    """Run every check, in order; a check that cannot run (what it needs is down) fails."""
    reachable = _store_reachable(settings, store)
    yield reachable
    if reachable.ok:
        infos = store.primary_infos()  # a cluster's every primary, else the one server
        yield _eviction(infos)
        yield _persistence(infos)
    broker = _broker(app, timeout)
    yield broker
    if broker.ok and app.conf.broker_url.startswith(("amqp", "pyamqp")):
        yield _queue(app, settings)
    if broker.ok:
        yield _workers(app, settings, timeout)
    else:
        yield Check("workers", False, "not asked: the broker is unreachable", broker.fix)
    yield _visibility(settings)
    yield _tombstones(settings)
    if reachable.ok:
        yield _clock(store)


def _store_reachable(settings: Settings, store: RedisCheckpointer) -> Check:
    url = redact_url(settings.redis_url)
    try:
        version = dict(store.client.info("server")).get("redis_version", "?")
    except Exception as exc:
        return Check(
            "store reachable",
            False,
            f"{url}: {type(exc).__name__}: {exc}",
            "start Redis or fix AGENTS_PERSISTENCE_REDIS_URL (host, port, password, TLS)",
        )
    return Check("store reachable", True, f"{url}: Redis {version}")


def _where(infos: dict[str, dict[str, Any]], found: dict[str, str]) -> str:
    """``found`` (node -> what it says) as a detail: the one value of a single server, the
    shared value of every primary of a cluster, or each primary's."""
    if len(infos) <= 1:
        return next(iter(found.values()), "?")
    values = set(found.values())
    if len(values) == 1:
        return f"{values.pop()} (each of {len(infos)} primaries)"
    return "; ".join(f"{node}: {value}" for node, value in sorted(found.items()))


def _eviction(infos: dict[str, dict[str, Any]]) -> Check:
    policies = {node: str(info.get("maxmemory_policy", "?")) for node, info in infos.items()}
    ok = bool(policies) and all(policy == "noeviction" for policy in policies.values())
    return Check(
        "maxmemory-policy",
        ok,
        f"maxmemory-policy is {_where(infos, policies)}",
        ""
        if ok
        else "redis-cli CONFIG SET maxmemory-policy noeviction (and in redis.conf; on every "
        "primary of a cluster): any other policy lets Redis evict agent state and queued "
        "hand-offs under memory pressure",
    )


def _persistence(infos: dict[str, dict[str, Any]]) -> Check:
    found, ok = {}, bool(infos)
    for node, info in infos.items():
        aof = str(info.get("aof_enabled", "0")) == "1"
        replicas = int(info.get("connected_slaves", 0) or 0)
        role = str(info.get("role", "?"))
        ok = ok and (aof or replicas > 0 or role == "slave")
        found[node] = (
            f"appendonly {'yes' if aof else 'no'}, role {role}, {replicas} connected replica(s)"
        )
    return Check(
        "persistence",
        ok,
        _where(infos, found),
        ""
        if ok
        else "redis-cli CONFIG SET appendonly yes (and appendonly yes in redis.conf), or run "
        "a replica (of every primary of a cluster): without either, a restart loses "
        "acknowledged saves and queued hand-offs",
    )


def _broker(app: PersistenceApp, timeout: float) -> Check:
    url = redact_url(app.settings.broker)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=max(1, round(timeout)))
    except Exception as exc:
        return Check(
            "broker reachable",
            False,
            f"{url}: {type(exc).__name__}: {exc}",
            "start the broker or fix AGENTS_PERSISTENCE_BROKER_URL",
        )
    return Check("broker reachable", True, url)


def _queue(app: PersistenceApp, settings: Settings) -> Check:
    name = f"{settings.queue_type} queue"
    try:
        problem = declare_problem(app, settings)
    except Exception as exc:
        return Check(name, False, f"declaring {settings.queue}: {type(exc).__name__}: {exc}")
    if problem is not None:
        return Check(name, False, problem, SWITCH_FIX)
    return Check(name, True, f"RabbitMQ holds {settings.queue} as a {settings.queue_type} queue")


def _workers(app: PersistenceApp, settings: Settings, timeout: float) -> Check:
    fix = (
        f"start workers: celery -A agents_persistence.tasks worker -Q {settings.queue} "
        "(with the same AGENTS_PERSISTENCE_* settings as the agents)"
    )
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:
        return Check("workers", False, f"ping failed: {type(exc).__name__}: {exc}", fix)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check(
            "workers", False, f"no worker answered celery inspect ping in {timeout:g}s", fix
        )
    try:
        queues = app.control.inspect(destination=names, timeout=timeout).active_queues() or {}
    except Exception:
        queues = {}
    consumers = sorted(
        name for name, qs in queues.items() if any(q.get("name") == settings.queue for q in qs)
    )
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    if not consumers:
        return Check(
            "workers",
            False,
            f"{len(names)} worker(s) answered ({shown}), none consumes queue {settings.queue}",
            fix,
        )
    return Check(
        "workers", True, f"{len(consumers)} worker(s) consume queue {settings.queue} ({shown})"
    )


def _visibility(settings: Settings) -> Check:
    broker = settings.broker.get_secret_value()
    if not broker.startswith(("redis://", "rediss://", "sentinel://")):
        return Check("visibility timeout", True, "not a Redis broker: redelivery is the broker's")
    vt = settings.effective_visibility_timeout
    needed = settings.task_time_limit_seconds + settings.task_retry_backoff_max_seconds
    ok = vt > needed
    return Check(
        "visibility timeout",
        ok,
        f"{vt:g}s; a task may hold its message {needed:g}s (hard time limit "
        f"{settings.task_time_limit_seconds:g}s + longest retry countdown "
        f"{settings.task_retry_backoff_max_seconds:g}s)",
        ""
        if ok
        else "unset AGENTS_PERSISTENCE_VISIBILITY_TIMEOUT_SECONDS (it follows the limits) or "
        f"raise it above {needed:g}s: healthy messages are redelivered otherwise",
    )


def _tombstones(settings: Settings) -> Check:
    keep, window = settings.tombstone_ttl_seconds, settings.redelivery_window_seconds
    ok = keep >= window
    return Check(
        "tombstone lifetime",
        ok,
        f"{keep:g}s; an older save can still arrive up to {window:g}s after it was handed "
        "off (visibility timeout + task retry span)",
        "" if ok else f"raise AGENTS_PERSISTENCE_TOMBSTONE_TTL_SECONDS to at least {window:g}",
    )


def _clock(store: RedisCheckpointer, now: Callable[[], float] = time.time) -> Check:
    before = now()
    seconds, micros = store.client.time()
    after = now()
    skew = (seconds + micros / 1e6) - (before + after) / 2
    ok = abs(skew) <= MAX_CLOCK_SKEW_SECONDS
    return Check(
        "clock skew",
        ok,
        f"the store's clock is {skew:+.3f}s from this machine's (round trip "
        f"{(after - before) * 1000:.1f} ms)",
        ""
        if ok
        else "synchronise clocks (NTP/chrony) on agents, workers and Redis: versions without "
        "an explicit version= are clock-based across processes",
    )


@click.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the broker and the workers' answers.",
)
@pass_context
def doctor(obj: Context, timeout: float) -> None:
    """Check the deployment: Redis, broker, workers, timeouts, clocks; exit 1 if wrong."""
    out, failed = obj.console, 0
    out.print(f"namespace {escape(obj.settings.namespace)}, queue {escape(obj.settings.queue)}")
    for check in run_checks(obj.settings, obj.store, obj.app, timeout=timeout):
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        out.print(
            f"{mark} {escape(check.name)}: {escape(check.detail)}", highlight=False, soft_wrap=True
        )
        if not check.ok:
            failed += 1
            if check.fix:
                out.print(f"     fix: {escape(check.fix)}", highlight=False, soft_wrap=True)
    if failed:
        out.print(f"{failed} problem(s) found")
        raise click.exceptions.Exit(1)
    out.print("no problem found")
