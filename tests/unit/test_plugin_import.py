"""The pytest plugin costs nothing until a fixture is used.

``agents_persistence.tasks.testing`` is loaded into every pytest run of an environment that
has agents-persistence installed (the ``pytest11`` entry point), so importing it, or the
packages above it, must not import Celery, kombu, redis-py or fakeredis. Each check runs in a
fresh interpreter: this test process has long imported all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.unit

#: Top-level packages the plugin must not load (Celery's own dependencies included).
HEAVY = frozenset({"celery", "kombu", "redis", "fakeredis", "billiard", "amqp", "vine", "lupa"})


def heavy_modules_after(code: str, cwd: Path) -> list[str]:
    """The :data:`HEAVY` modules loaded once ``code`` has run in a fresh interpreter."""
    probe = textwrap.dedent(
        f"""
        import json, sys
        {code}
        heavy = {sorted(HEAVY)!r}
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
        """
    )
    # -I: no PYTHONPATH, no user site, no current directory on sys.path; the installed
    # package is found through site-packages, as a user's interpreter finds it.
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    ["agents_persistence", "agents_persistence.tasks", "agents_persistence.tasks.testing"],
)
def test_importing_loads_no_broker_or_redis_client(module: str, tmp_path: Path) -> None:
    assert heavy_modules_after(f"import {module}", tmp_path) == []


def test_the_probe_sees_what_a_public_name_loads(tmp_path: Path) -> None:
    # The control: the same probe does see Celery once a name that needs it is used.
    loaded = heavy_modules_after(
        "from agents_persistence.tasks import CeleryCheckpointer", tmp_path
    )

    assert {"celery", "kombu", "redis"} <= {m.split(".")[0] for m in loaded}


def test_a_pytest_run_loads_them_only_when_a_fixture_is_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=f"""
        import sys

        HEAVY = {sorted(HEAVY)!r}


        def heavy():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY))


        def test_the_plugin_is_loaded_and_costs_nothing(request):
            assert request.config.pluginmanager.has_plugin("agents_persistence")
            assert heavy() == []


        def test_a_fixture_brings_what_it_needs(eager_checkpointer):
            assert {{"celery", "kombu", "redis", "fakeredis"}} <= set(heavy())
        """
    )

    # A plain run in a separate interpreter: the plugin comes from the entry point, as in a
    # user's project.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")

    result.assert_outcomes(passed=2)
