"""What every ``agents-persistence`` command shares: settings, store, app, clean errors.

A command never prints a traceback for an expected failure (the errors below): it prints one
line, ``error: <Type>: <message>``, on stderr, exits with 1, and any password of the URLs in
play is replaced by ``***`` first. Ctrl-C exits with 130.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, NoReturn

import click
import redis
from agents_persistence.config.settings import Settings
from agents_persistence.config.urls import url_passwords
from agents_persistence.errors import PersistenceError
from agents_persistence.redis_store import RedisCheckpointer
from agents_persistence.tasks.devtools.celery_process import CeleryProcessError
from agents_persistence.tasks.devtools.embedded import EmbeddedRedisError
from agents_persistence.tasks.worker.app import PersistenceApp, create_app
from agents_persistence.tasks.worker.dead_letters import DeadLetters
from kombu.exceptions import KombuError
from pydantic import ValidationError
from rich.console import Console

__all__ = ["CliError", "CliGroup", "Context", "describe", "fail", "pass_context"]

_EXPECTED_ERRORS = (
    PersistenceError,
    ValidationError,
    redis.exceptions.RedisError,
    KombuError,
    EmbeddedRedisError,
    CeleryProcessError,
    OSError,
)


class CliError(click.ClickException):
    """A failure already explained in its message (exit code 1)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Context:
    """Per-invocation state: the overrides, and the objects built from them on first use."""

    def __init__(self, overrides: dict[str, str], console: Console) -> None:
        self.overrides = overrides
        self.console = console

    @cached_property
    def settings(self) -> Settings:
        return Settings(**self.overrides)  # type: ignore[arg-type]

    @cached_property
    def store(self) -> RedisCheckpointer:
        return RedisCheckpointer.from_settings(self.settings)

    @cached_property
    def app(self) -> PersistenceApp:
        return create_app(self.settings, store=self.store)

    @property
    def dead_letters(self) -> DeadLetters:
        return self.app.dead_letters

    def secrets(self) -> list[str]:
        """Passwords that must never be printed (from the overrides and the settings)."""
        urls = [self.overrides.get("redis_url", "")]
        if "settings" in self.__dict__:
            urls += [
                self.settings.redis_url.get_secret_value(),
                self.settings.broker.get_secret_value(),
            ]
            if self.settings.broker_url is not None:  # as given: ?sentinel_password= too
                urls.append(self.settings.broker_url.get_secret_value())
        found = {secret for url in urls for secret in url_passwords(url)}
        return sorted(found, key=len, reverse=True)


def describe(exc: BaseException) -> str:
    """One line for an expected failure (validation errors without their input)."""
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        return "invalid settings: " + "; ".join(parts)
    return f"{type(exc).__name__}: {exc}"


class CliGroup(click.Group):
    """Turns expected failures into one redacted line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _EXPECTED_ERRORS as exc:
            obj = ctx.find_object(Context)
            message = describe(exc)
            for secret in obj.secrets() if obj is not None else []:
                message = message.replace(secret, "***")
            raise CliError(message) from exc
        except KeyboardInterrupt:
            click.echo("interrupted; everything the command started was ended", err=True)
            ctx.exit(130)


def fail(message: str) -> NoReturn:
    """Stop the command with ``message`` (exit code 1)."""
    raise CliError(message)


pass_context = click.make_pass_decorator(Context)
