"""``celery -A bench.metrics_off_app worker``: the layer's worker with metric recording off.

The "off" side of the metrics-cost section (:mod:`bench.p9_metrics`): the same app as
``celery -A agents_persistence.tasks worker``, with every count and histogram a no-op.
"""

from __future__ import annotations

from agents_persistence import metrics
from agents_persistence.tasks import create_app

__all__ = ["app"]

metrics.disable()
app = create_app()
