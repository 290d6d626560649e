"""The shipped app with some of Celery's monitoring switched off, for fault tests that need
a worker configured as a deployment may still choose (``celery -A
tests.faults.worker_apps:<name> worker``).

``events_off``
    Task events off (``worker_send_task_events`` and ``task_send_sent_event`` False). With
    the harness's ``--without-heartbeat --without-gossip`` the worker then has no event
    dispatcher at all, and a Redis broker restart with a task running ended the worker
    through the half-closed remote-control channel every time when the transport's guard
    (``redis_transport.Channel._connparams``) was taken out: 3 exits in 3 runs, against 1
    in 3 with task events on.
``no_remote_control``
    Task events and remote control off: nothing listens on the pidbox channel, so only the
    task channel can notice that the broker went away (with remote control on, the pidbox
    socket notices at once).
"""

from __future__ import annotations

from agents_persistence.tasks import create_app

__all__ = ["events_off", "no_remote_control"]

_EVENTS_OFF = {"worker_send_task_events": False, "task_send_sent_event": False}

events_off = create_app()
events_off.conf.update(_EVENTS_OFF)

no_remote_control = create_app()
no_remote_control.conf.update(_EVENTS_OFF, worker_enable_remote_control=False)
