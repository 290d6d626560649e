"""The alert rules, their tests, the Prometheus config and the Grafana dashboard: valid for
promtool, and naming only metrics the code exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from agents_persistence.metrics import METRICS

from tests.support import skip_or_fail

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Series a histogram exposes besides its name.
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        skip_or_fail("promtool is not installed (Debian: apt-get install prometheus)")
    assert found is not None
    return found


def run_promtool(*args: str, cwd: Path = DOCS) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def exposed(series: str) -> bool:
    """Whether ``series`` is one the code exposes (a histogram's buckets, sum and count too)."""
    if series in METRICS:
        return True
    for suffix in SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base, ("",))[0] == "histogram":
            return True
    return False


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bagents_persistence_\w+", expr))


def test_the_alert_rules_pass_promtool() -> None:
    out = run_promtool("check", "rules", "alerts.yml")
    assert "SUCCESS: 6 rules found" in out


def test_each_alert_fires_on_its_condition_and_only_then() -> None:
    out = run_promtool("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in out
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    tested = set(re.findall(r"alertname: (\w+)", (DOCS / "alerts.test.yml").read_text()))
    assert tested == {rule["alert"] for rule in rules}


def test_the_alert_rules_name_only_exposed_metrics() -> None:
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    used: set[str] = set()
    for rule in rules:
        used |= names_in(rule["expr"])
    unknown = {name for name in used if not exposed(name)}
    assert not unknown
    assert used, "no rule uses the layer's metrics"


def test_the_dashboard_queries_only_exposed_metrics() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    used = set().union(*(names_in(e) for e in exprs))
    assert not {name for name in used if not exposed(name)}
    # Every metric shows somewhere on the dashboard.
    shown = {name for name in METRICS if any(exposed(u) and u.startswith(name) for u in used)}
    assert shown == set(METRICS)


def test_the_prometheus_config_scrapes_workers_and_flower() -> None:
    config = ROOT / "deploy" / "prometheus.yml"
    run_promtool("check", "config", "--syntax-only", str(config))
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    workers = jobs["agents-persistence-workers"]["dns_sd_configs"][0]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    port = compose["x-settings"]["AGENTS_PERSISTENCE_METRICS_PORT"]
    assert workers["names"] == ["worker"]
    assert str(workers["port"]) == port
    assert "worker" in compose["services"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    prometheus = compose["services"]["prometheus"]
    assert "./docs/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]


def test_promtool_is_installed_in_ci() -> None:
    """.ci/run installs it where missing, so under CI=true the tests above never skip."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "command -v promtool" in ci
    if os.environ.get("CI") == "true":
        assert shutil.which("promtool"), "CI=true without promtool"
