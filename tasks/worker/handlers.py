"""The worker tasks: unpack, call the core, decide between ack, retry and dead letter.

The invariant: a message is acknowledged only once its outcome is durable, stored
(written, duplicate or stale) or dead-lettered. Every other exit gives it back to the
broker: the task raises ``Reject(requeue=True)``, and :class:`GiveBackRequest` requeues
whatever else escapes (a hard time limit included). Nothing here swallows ``Reject``.

Retries multiply: one store call makes up to ``retry_attempts + 1`` tries within
``retry_deadline_seconds`` (tenacity, in the core); when it still fails with
:class:`StoreUnavailable` (or the soft time limit interrupts it), the task is retried by
Celery up to ``task_max_retries`` times (passed explicitly: Celery's ``max_retries=None``
means its own default of 3) with jittered exponential countdowns capped at
``task_retry_backoff_max_seconds`` (``Settings.task_backoff``, whose sum the settings check
tombstone lifetimes against). Then it is dead-lettered; if the dead-letter list is
unreachable too (the store is still down), the message goes back to the queue after a
pause, and each redelivery tries the write first. So an outage of any length ends with
every hand-off stored or dead-lettered once the store returns
(``tests/faults/test_outages.py``; each exit on its own: ``tests/unit/test_handlers.py``).

A dead-letter list whose key holds another Redis type (:class:`StoreMisconfigured`, an
operator's ``SET`` on it, say) is no outage and no retry fixes it: the worker logs CRITICAL,
naming the key and the fix (at most once a minute per process and key), and re-publishes
the message with the longest retry countdown, its retry count unchanged, so the held
messages wait in the broker rather than in pool slots and the queue's good messages keep
flowing. Once the key is deleted or renamed, the next delivery dead-letters it
(``tests/faults/test_dead_letter_misconfigured.py``). If that re-publish fails, the message
goes back to the queue after a pause, as when the list is unreachable.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from agents_persistence.checkpoint import PreparedSave, WriteResult
from agents_persistence.errors import (
    CorruptState,
    InvalidInput,
    StoreMisconfigured,
    StoreUnavailable,
)
from agents_persistence.metrics import metrics
from agents_persistence.tasks.broker.queues import broker_countdown
from agents_persistence.tasks.protocol.messages import (
    ForeignNamespace,
    entry_kwargs,
    parse_batch,
    parse_delete,
    parse_entry,
    parse_save,
)
from agents_persistence.tasks.protocol.names import (
    CLEANUP_TASK,
    DELETE_TASK,
    SAVE_BATCH_TASK,
    SAVE_TASK,
)
from agents_persistence.tasks.tracing import span
from agents_persistence.tasks.worker.dead_letters import DeadLetters, make_entry
from agents_persistence.tasks.worker.metrics import dead_lettered
from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated
from celery.worker.request import Request
from celery.worker.state import task_ready

if TYPE_CHECKING:
    from agents_persistence.tasks.worker.app import PersistenceApp

__all__ = ["GiveBackRequest", "PersistenceTask", "register_tasks"]

logger = logging.getLogger(__name__)

#: Seconds to hold a message before giving it back when even the dead-letter list is down.
_REQUEUE_PAUSE = 1.0
#: Exceptions that already carry their message's fate (Celery acts on each of them).
_DECIDED = (Retry, Reject, Ignore)
#: Seconds between two CRITICAL logs about one misconfigured dead-letter key, per process.
_MISCONFIGURED_LOG_PERIOD = 60.0
#: The retry number whose backoff ceiling is the cap: a held message waits the longest
#: countdown (``task_retry_backoff_max_seconds``, jittered down to half).
_HOLD_RETRY = 1000


class LogThrottle:
    """Lets one report per key through every ``period`` seconds and counts the others.

    :meth:`due` answers None while the key's period runs, else how many reports were held
    back since the last one let through (and starts a new period).
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> int | None:
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


_misconfigured_reports = LogThrottle(_MISCONFIGURED_LOG_PERIOD)


def report_misconfigured(exc: StoreMisconfigured, hold_seconds: float) -> None:
    """Log CRITICAL that the dead-letter list ``exc.key`` holds another type, and the fix;
    at most once per :data:`_MISCONFIGURED_LOG_PERIOD` per process and key."""
    held = _misconfigured_reports.due(exc.key)
    if held is None:
        return
    logger.critical(
        "dead-letter list %r cannot be written (%s): messages to dead-letter are held in the "
        "broker, re-published every %.0f s at most, until an operator runs DEL %s (or RENAME "
        "%s <another key> to keep its value); %d more held in this process since the last "
        "report",
        exc.key, exc.reason, hold_seconds, exc.key, exc.key, held,
    )  # fmt: skip


class GiveBackRequest(Request):
    """A request whose undecided failures give the message back instead of dropping it.

    Celery acknowledges a failed task's message (``acks_on_failure``) or rejects it without
    requeue, which loses it on every broker. The layer's tasks handle every error they
    expect; anything that still escapes (a bug, an error inside Celery's own call) has no
    durable outcome, so the message is requeued. Hard time limits requeue through
    ``acks_on_timeout = False``; a lost worker through ``reject_on_worker_lost``.
    """

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        # Unwrap only billiard's wrapper (as Celery does): a Retry carries the error that
        # caused it in ``exc`` too, and unwrapping that would requeue a message whose retry
        # was published, so it would never run out of retries.
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        passed_on = (*_DECIDED, Terminated, MemoryError)
        undecided = isinstance(exc, Exception) and not isinstance(exc, passed_on)
        if undecided and self.task.acks_late and not self.acknowledged:
            task_ready(self)
            logger.error(
                "task %s[%s] failed without a durable outcome (%s); message returned to the queue",
                self.name, self.id, type(exc).__name__,
            )  # fmt: skip
            self.reject(requeue=True)
            return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class PersistenceTask(Task):  # type: ignore[type-arg]
    """Base of the layer's tasks: explicit reliability options, nothing acked undecided."""

    acks_late = True
    reject_on_worker_lost = True
    acks_on_failure = False
    acks_on_timeout = False  # a hard time limit gives the message back
    Request = f"{__name__}:GiveBackRequest"
    ignore_result = True
    typing = False  # arguments are checked by protocol.messages, so bad ones are dead-lettered

    @property
    def papp(self) -> PersistenceApp:
        return self.app  # type: ignore[return-value]

    def countdown(self) -> float:
        """Jittered exponential backoff for the next Celery retry.

        Drawn from ``Settings.task_backoff``, the schedule whose sum the settings check
        tombstone lifetimes against (at least a second on a quorum queue, whose delayed
        delivery counts whole seconds: :func:`~agents_persistence.tasks.broker.queues.
        broker_countdown`).
        """
        settings = self.papp.settings
        return broker_countdown(settings, settings.task_backoff.delay(self.request.retries))

    def dead_letter(
        self,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        task: str | None = None,
        **extra: Any,
    ) -> None:
        """Record a permanent failure; if that cannot be done, give the message back.

        Raises:
            Retry: the dead-letter list's key holds another Redis type: the message is
                re-published to wait there (see :meth:`hold`).
            Reject: the list is unreachable, or the re-publish failed: the message goes
                back to the queue (``requeue=True``).
        """
        try:
            self.push_dead_letter(exc, args, kwargs, task=task, **extra)
        except StoreMisconfigured as misconfigured:
            self.hold(misconfigured, args, kwargs)

    def push_dead_letter(
        self,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        task: str | None = None,
        **extra: Any,
    ) -> None:
        """Write a dead-letter entry for ``exc``.

        ``task`` names the task that replays the entry (default: this one); one bad entry
        of a batch is recorded as a single save, so it replays as one. A message of another
        namespace (:class:`ForeignNamespace`) is recorded in that namespace's list.

        Raises:
            StoreMisconfigured: the list's key holds another Redis type (reported CRITICAL,
                throttled); the caller decides what becomes of the message.
            Reject: the list is unreachable: the message goes back to the queue after a
                pause (``requeue=True``).
        """
        letters, namespace = self.papp.dead_letters, self.papp.settings.namespace
        if isinstance(exc, ForeignNamespace):
            namespace = exc.namespace
            letters = DeadLetters(
                self.papp.store.dead_letter_list(letters.max_length, namespace=namespace)
            )
        entry = make_entry(
            str(exc) or type(exc).__name__,
            type(exc).__name__,
            namespace=namespace,
            task=task or self.name,
            task_id=self.request.id,
            retries=self.request.retries,
            args=list(args),
            kwargs=dict(kwargs),
            **extra,
        )
        try:
            letters.push(entry)
        except StoreMisconfigured as misconfigured:
            report_misconfigured(misconfigured, self.papp.settings.task_retry_backoff_max_seconds)
            raise
        except Exception as push_exc:
            logger.error("dead-letter list unavailable (%s); message returned to the queue",
                         push_exc)  # fmt: skip
            time.sleep(_REQUEUE_PAUSE)
            raise Reject(push_exc, requeue=True) from push_exc
        dead_lettered(task or self.name, kwargs)
        logger.warning("dead-lettered %s (%s): %s", self.name, entry["id"], entry["reason"])

    def hold(
        self, exc: StoreMisconfigured, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> NoReturn:
        """Re-publish this task with ``args``/``kwargs`` after the longest retry countdown,
        its retry count unchanged: a message that cannot be dead-lettered waits in the
        broker, not in a pool slot, and never uses up its retries there.

        Celery's ``self.retry`` always counts one more retry (and raises past
        ``max_retries``), so the retry is built from the same parts: the request's
        signature (same task id and retry count, plus the countdown) and a ``Retry``.
        In eager mode ``exc`` is raised to the caller (an eager retry runs at once).

        Raises:
            Retry: the message is re-published (Celery then acknowledges this one).
            Reject: the re-publish failed: the message goes back to the queue after a pause.
        """
        if self.request.is_eager:
            raise exc
        settings = self.papp.settings
        countdown = broker_countdown(settings, settings.task_backoff.delay(_HOLD_RETRY))
        try:
            held = self.signature_from_request(
                self.request, tuple(args), dict(kwargs), countdown=countdown
            )
            held.apply_async()
        except Exception as publish_exc:
            logger.warning("could not re-publish a message to dead-letter (%s); message "
                           "returned to the queue", publish_exc)  # fmt: skip
            time.sleep(_REQUEUE_PAUSE)
            raise Reject(publish_exc, requeue=True) from exc
        raise Retry(exc=exc, when=countdown, sig=held)  # type: ignore[arg-type]  # numbers.Real

    def retry_or_dead_letter(
        self, exc: Exception, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        """Celery retry with backoff while retries remain; then dead letter.

        Raises:
            Retry: the retry is published (Celery then acknowledges this message).
            Reject: the retry could not be published, or the dead-letter list is
                unreachable: the message goes back to the queue (``requeue=True``).
        """
        limit = self.papp.settings.task_max_retries
        if self.request.retries < limit and not self.request.is_eager:
            try:
                raise self.retry(
                    exc=exc,
                    countdown=self.countdown(),
                    max_retries=limit,  # None would mean Celery's default (3), not ours
                    args=tuple(args),
                    kwargs=dict(kwargs),
                )
            except Reject as rejected:
                # Celery's retry raises Reject(requeue=False) when it cannot publish the
                # retry: that would drop the message. Give it back instead.
                reason = getattr(rejected, "reason", rejected)
                logger.warning("could not publish a retry (%s); message returned to the queue",
                               reason)  # fmt: skip
                time.sleep(_REQUEUE_PAUSE)
                raise Reject(reason, requeue=True) from exc
        self.dead_letter(exc, args, kwargs, exhausted=True)

    def apply_write(
        self, write: Callable[[], WriteResult], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run one write; bad input dead-letters, an unavailable store retries."""
        try:
            result = write()
        except (InvalidInput, CorruptState) as exc:
            self.dead_letter(exc, args, kwargs)
            return {"outcome": "dead_lettered"}
        except (StoreUnavailable, SoftTimeLimitExceeded) as exc:
            self.retry_or_dead_letter(exc, args, kwargs)
            return {"outcome": "dead_lettered"}
        return {"outcome": result.outcome.value, "version": result.version}


def guarded(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Give a write task's unexpected errors a durable outcome: a dead letter.

    In eager mode they propagate to the caller instead, as any error of an inline call.

    ``Retry`` and ``Reject`` pass through (Celery acts on them); if even the dead letter
    cannot be written, :meth:`PersistenceTask.dead_letter` raises ``Reject(requeue=True)``.
    """

    @functools.wraps(fn)
    def run(self: PersistenceTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(self, *args, **kwargs)
        except _DECIDED:
            raise
        except SoftTimeLimitExceeded as exc:
            self.retry_or_dead_letter(exc, args, kwargs)
        except Exception as exc:
            if self.request.is_eager:
                raise  # eager mode: the caller's test sees the bug (its state is still held)
            logger.exception("unexpected error in %s", self.name)
            self.dead_letter(exc, args, kwargs, unexpected=True)
        return {"outcome": "dead_lettered"}

    return run


@guarded
def save_state(self: PersistenceTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write one handed-off snapshot; stale and duplicate versions are successes."""
    app = self.papp

    def write() -> WriteResult:
        save = parse_save(args, kwargs, namespace=app.settings.namespace, codec=app.store.codec)
        with span("agents_persistence.write", thread_id=save.thread_id, version=save.version):
            result = app.store.save_prepared(save)
        metrics().saved(result.outcome.value, save.saved_at_ms)
        return result

    return self.apply_write(write, args, kwargs)


@guarded
def save_states(self: PersistenceTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write a batch in one pipelined round trip; bad entries are dead-lettered one by one."""
    app = self.papp
    try:
        entries = parse_batch(args, kwargs, namespace=app.settings.namespace)
    except InvalidInput as exc:
        self.dead_letter(exc, args, kwargs)
        return {"outcome": "dead_lettered"}
    valid: list[tuple[Mapping[str, Any], PreparedSave]] = []
    # Entries to dead-letter whose list's key holds another type: re-published together
    # once the others have an outcome, never acked with the batch.
    held: list[Any] = []
    misconfigured: StoreMisconfigured | None = None
    counts = {"written": 0, "duplicate": 0, "stale": 0, "dead_lettered": 0}
    namespace = app.settings.namespace

    def dead_letter_entry(exc: BaseException, entry: Any, replay: Mapping[str, Any]) -> None:
        nonlocal misconfigured
        try:
            self.push_dead_letter(exc, (), replay, task=SAVE_TASK, batch=True)
        except StoreMisconfigured as err:
            misconfigured = err
            held.append(entry)
        else:
            counts["dead_lettered"] += 1

    for entry in entries:
        try:
            valid.append((entry, parse_entry(entry, app.store.codec)))
        except InvalidInput as exc:
            dead_letter_entry(exc, entry, entry_kwargs(namespace, entry))
    try:
        with span("agents_persistence.write", snapshots=len(valid)):
            results = app.store.save_many([save for _, save in valid])
    except (StoreUnavailable, SoftTimeLimitExceeded) as exc:
        # Retry only the valid entries and the held ones: the other bad ones are already
        # dead-lettered (left to guarded, the soft time limit would retry the whole
        # message and dead-letter them twice).
        retry_kwargs: dict[str, Any] = {
            "namespace": namespace,
            "entries": [entry for entry, _ in valid] + held,
        }
        self.retry_or_dead_letter(exc, (), retry_kwargs)
        return {"outcome": "dead_lettered"}
    stored: list[tuple[str, int]] = []
    for (sent, save), result in zip(valid, results, strict=True):
        if isinstance(result, WriteResult):
            counts[result.outcome.value] += 1
            stored.append((result.outcome.value, save.saved_at_ms))
        else:
            dead_letter_entry(result, sent, {"namespace": namespace, **sent})
    metrics().saved_batch(stored)
    if misconfigured is not None:
        logger.info("batch %s: %s; %d entries held", self.request.id, counts, len(held))
        self.hold(misconfigured, (), {"namespace": namespace, "entries": held})
    return counts


@guarded
def delete_thread(self: PersistenceTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Apply a delete (tombstone) handed off asynchronously."""
    app = self.papp

    def write() -> WriteResult:
        msg = parse_delete(args, kwargs, namespace=app.settings.namespace)
        result = app.store.delete_thread(msg.thread_id, version=msg.version)
        metrics().deleted(result.outcome.value)
        return result

    return self.apply_write(write, args, kwargs)


def cleanup_expired(self: PersistenceTask) -> dict[str, Any]:
    """Drop up to ``cleanup_batch_size`` expired index entries (idempotent, bounded)."""
    app = self.papp
    try:
        removed = app.store.cleanup_expired(limit=app.settings.cleanup_batch_size)
    except StoreUnavailable:
        logger.warning("cleanup skipped: store unavailable; the next beat tick retries")
        return {"removed": 0, "skipped": True}
    return {"removed": removed}


def register_tasks(app: PersistenceApp) -> None:
    """Register the layer's tasks on ``app`` under their stable names."""
    common: dict[str, Any] = {"base": PersistenceTask, "bind": True}
    for name, fn in (
        (SAVE_TASK, save_state),
        (SAVE_BATCH_TASK, save_states),
        (DELETE_TASK, delete_thread),
        (CLEANUP_TASK, cleanup_expired),
    ):
        app.task(name=name, **common)(fn)  # type: ignore[no-untyped-call]
    # The LangGraph saver's write-behind task (its module imports no LangGraph; importing it
    # at the top would be circular: it builds on PersistenceTask).
    from agents_persistence.tasks.worker.langgraph_tasks import register_langgraph_tasks

    register_langgraph_tasks(app)
