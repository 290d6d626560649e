"""The store's retry policy: tenacity at the storage boundary, and nowhere else.

Only errors on the allow-list below are retried: the connection dropped or timed out, the
server is still loading its data set, it is a replica that turned read-only during a
failover, or a Redis Cluster is moving the slot (``TRYAGAIN``; redis-py's cluster client out
of redirections). Everything else (bad credentials, a script error, WRONGTYPE) fails at once. When
the policy gives up, :class:`~persistence.errors.StoreUnavailable` is raised from the last
error. A server out of memory under ``noeviction`` (``OOM``) raises
:class:`~persistence.errors.StoreFull` (a ``StoreUnavailable``) at once: quick retries
cannot free memory, the callers' slower retries (Celery's countdowns) can.

The first call runs without tenacity, so the happy path costs nothing; after a transient
failure the call is retried at once (a pooled connection that the server dropped usually
reconnects straight away) and then with capped, jittered exponential backoff, bounded by
both an attempt count and a deadline.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, NoReturn, ParamSpec, TypeVar

import redis.exceptions as rex
from agents_persistence.errors import StoreFull, StoreUnavailable
from agents_persistence.metrics import metrics
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

__all__ = ["TRANSIENT_ERRORS", "RetryPolicy", "is_transient"]

logger = logging.getLogger(__name__)

#: Errors worth retrying: the server may answer the same request a moment later.
TRANSIENT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    rex.ConnectionError,  # refused, reset, closed mid-reply; includes BusyLoadingError
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica promoted late / a primary demoted during failover
    rex.TryAgainError,  # a multi-key command while its slot migrates
    rex.ClusterDownError,
    rex.ClusterError,  # redis-py's cluster client out of redirections ("TTL exhausted")
)
#: Subclasses of ConnectionError that no retry can fix.
_PERMANENT: Final[tuple[type[BaseException], ...]] = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.AuthenticationWrongNumberOfArgsError,
    rex.MaxConnectionsError,
)

#: tenacity 9.2 renamed wait_exponential_jitter's ``initial`` to ``multiplier`` and warns on
#: the old name (an error under ``-W error``); older releases only know ``initial``. Both are
#: accepted: deepagents' Google dependency (google-genai) caps tenacity below 9.2.
_BACKOFF_ARG: Final = (
    "multiplier"
    if "multiplier" in inspect.signature(wait_exponential_jitter).parameters
    else "initial"
)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", Retrying, AsyncRetrying)


def is_transient(exc: BaseException) -> bool:
    """True for errors on the allow-list that are not authentication failures."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, _PERMANENT)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retrying one store call.

    Args:
        attempts: retries after the first failed call (so at most ``attempts + 1`` calls).
        initial_backoff: first wait, in seconds, before jitter.
        max_backoff: cap of any single wait.
        deadline: give up once this many seconds have passed since the first failure.
    """

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    deadline: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.initial_backoff <= 0 or self.deadline <= 0:
            raise ValueError("retry bounds must be positive")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff is below initial_backoff")

    def call(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn``; on transient errors retry within the bounds, then StoreUnavailable.

        Its time, retries included, is observed as ``store_seconds{op=what}``."""
        started = time.perf_counter()
        try:
            return self._call(what, fn, *args, **kwargs)
        finally:
            metrics().store_call(what, time.perf_counter() - started)

    def _call(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._first_failure(what, exc)
        try:
            return self._retrying(Retrying, what)(fn, *args, **kwargs)
        except Exception as exc:
            self._gave_up(what, exc)

    async def acall(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """:meth:`call` for a coroutine function: the same bounds, allow-list and errors,
        with tenacity's ``AsyncRetrying`` (its sleeps never block the event loop)."""
        started = time.perf_counter()
        try:
            return await self._acall(what, fn, *args, **kwargs)
        finally:
            metrics().store_call(what, time.perf_counter() - started)

    async def _acall(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            self._first_failure(what, exc)
        try:
            return await self._retrying(AsyncRetrying, what)(fn, *args, **kwargs)
        except Exception as exc:
            self._gave_up(what, exc)

    def _retrying(self, kind: type[R], what: str) -> R:
        log = before_sleep_log(logger, logging.WARNING)

        def before_sleep(state: RetryCallState) -> None:
            metrics().store_retry(what)
            log(state)

        return kind(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
            wait=wait_exponential_jitter(
                max=self.max_backoff,
                jitter=self.initial_backoff,
                **{_BACKOFF_ARG: self.initial_backoff},
            ),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _first_failure(self, what: str, exc: Exception) -> None:
        """Return if the first call's error is worth retrying; raise what it means if not."""
        if isinstance(exc, rex.OutOfMemoryError):
            raise StoreFull(f"{what}: store out of memory ({_describe(exc)})") from exc
        if not is_transient(exc):
            raise exc
        if self.attempts == 0:
            raise StoreUnavailable(f"{what}: store unavailable ({_describe(exc)})") from exc
        metrics().store_retry(what)
        logger.warning("%s: transient store error (%s); retrying", what, _describe(exc))

    def _gave_up(self, what: str, exc: Exception) -> NoReturn:
        """Raise what the last error means once the retries are over."""
        if isinstance(exc, rex.OutOfMemoryError):
            raise StoreFull(f"{what}: store out of memory ({_describe(exc)})") from exc
        if not is_transient(exc):
            raise exc
        raise StoreUnavailable(
            f"{what}: store unavailable after {self.attempts + 1} attempts ({_describe(exc)})"
        ) from exc

    @property
    def worst_case_seconds(self) -> float:
        """The longest the policy may sleep in total (excluding the calls themselves)."""
        total, wait = 0.0, self.initial_backoff
        for _ in range(max(self.attempts - 1, 0)):
            total += min(wait + self.initial_backoff, self.max_backoff)
            wait *= 2
        return min(total, self.deadline)


def _describe(exc: BaseException) -> str:
    # redis-py messages carry host and port, never the password; keep them short.
    return f"{type(exc).__name__}: {str(exc)[:200]}"
