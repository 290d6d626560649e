"""``celery -A tests.faults.events_off_app worker``: the shipped app with task events off.

The configuration before task events were switched on (``worker_send_task_events`` and
``task_send_sent_event`` False), as a deployment may still choose it. With the harness's
``--without-heartbeat --without-gossip`` the worker then has no event dispatcher at all, and
a Redis broker restart with a task running ended the worker through the half-closed
remote-control channel every time when the transport's guard
(``redis_transport.Channel._connparams``) was taken out: 3 exits in 3 runs, against 1 in 3
with task events on.
"""

from __future__ import annotations

from agents_persistence.tasks import app

__all__ = ["app"]

app.conf.worker_send_task_events = False
app.conf.task_send_sent_event = False
