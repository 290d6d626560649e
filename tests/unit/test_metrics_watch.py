"""``stats --watch`` computes what Prometheus would: rates and histogram quantiles over the
interval between two scrapes of the same endpoints."""

from __future__ import annotations

import math

import pytest
from agents_persistence.metrics import Metrics
from agents_persistence.tasks.cli.watch import Reading, Scrape, Watch, quantile
from prometheus_client import generate_latest

pytestmark = pytest.mark.unit


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    before = {0.1: 0.0, 0.5: 0.0, 1.0: 0.0, math.inf: 0.0}
    after = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, before, after) == pytest.approx(0.1)
    assert quantile(0.7, before, after) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert quantile(0.99, before, after) == pytest.approx(0.5 + 0.5 * (9 / 10))
    assert math.isnan(quantile(0.5, after, after))  # nothing observed in between


def test_quantile_in_the_open_bucket_is_the_highest_finite_bound() -> None:
    assert quantile(0.99, {}, {1.0: 0.0, 5.0: 1.0, math.inf: 10.0}) == 5.0


def scrape_of(metrics: Metrics) -> Scrape:
    scrape = Scrape()
    scrape.add_text(generate_latest(metrics.registry).decode())
    return scrape


def test_rows_show_rates_and_quantiles_of_the_interval() -> None:
    worker = Metrics()
    worker.saved("written", count=3)
    worker.store_call("save", 0.002)
    first = scrape_of(worker)
    for _ in range(20):
        worker.saved("written")
        worker.handoff_to_durable.observe(0.04)
        worker.store_call("save", 0.003)
    worker.saved("failed", count=2)
    worker.store_retry("save")
    second = scrape_of(worker)
    second_endpoint = Metrics()
    second_endpoint.saved("written", count=10)  # a second worker: summed
    second.add_text(generate_latest(second_endpoint.registry).decode())

    before = Reading(at=100.0, queue=5, dead_letters=1, threads=(7, 0), scrape=first)
    after = Reading(at=102.0, queue=3, dead_letters=2, threads=(9, 1), scrape=second)
    watch = Watch.__new__(Watch)
    watch.urls = ["http://w1/metrics", "http://w2/metrics"]
    rows = dict(watch.rows(before, after))
    assert rows["queue depth"] == "3"
    assert rows["dead letters"] == "2"
    assert rows["threads live / expired"] == "9 / 1"
    assert "written 15.0" in rows["writes/s"]  # (20 + 10) / 2 s
    assert "failed 1.0" in rows["writes/s"]
    p50, p99 = rows["hand-off to durable p50 / p99"].split(" / ")
    assert 25.0 <= float(p50.removesuffix(" ms")) <= 50.0  # inside the 25-50 ms bucket
    assert 25.0 <= float(p99.removesuffix(" ms")) <= 50.0
    assert "store save p50 / p99" in rows
    assert rows["store retries/s"] == "0.5"
