"""The pytest plugin (:mod:`agents_persistence.tasks.testing`) as a user meets it: installed, no
conftest needed.

Each test writes a small user test suite into a temporary directory and runs pytest on it
with ``pytester``; the plugin is found through the package's ``pytest11`` entry point.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.unit

USER_SUITE = textwrap.dedent(
    """
    from agents_persistence import AgentStateSnapshot, TodoItem
    from agents_persistence.tasks import CeleryCheckpointer, HandOff


    def state(text):
        return AgentStateSnapshot(todos=[TodoItem.pending(text)], files={"notes.md": text})


    def test_save_then_load(eager_checkpointer):
        assert isinstance(eager_checkpointer, CeleryCheckpointer)
        handle = eager_checkpointer.save_state("thread-1", state("draft"), version=1)
        assert isinstance(handle, HandOff)
        handle.wait(timeout=1)
        assert eager_checkpointer.load_state("thread-1") == state("draft")
        assert eager_checkpointer.list_threads() == ["thread-1"]


    def test_every_test_starts_empty(eager_checkpointer, persistence_store):
        assert eager_checkpointer.list_threads() == []
        eager_checkpointer.save_state("thread-1", state("again"), version=1)
        assert persistence_store.load_state("thread-1") == state("again")


    def test_newest_version_wins(eager_checkpointer):
        eager_checkpointer.save_state("thread-1", state("v2"), version=2)
        eager_checkpointer.save_state("thread-1", state("v1"), version=1)
        eager_checkpointer.flush(timeout=1)
        assert eager_checkpointer.load_state("thread-1") == state("v2")


    def test_delete(eager_checkpointer):
        eager_checkpointer.save_state("thread-1", state("x"))
        eager_checkpointer.delete_thread("thread-1")
        assert eager_checkpointer.load_state("thread-1") is None


    def test_refused_messages_are_dead_lettered(eager_app):
        eager_app.tasks["agents_persistence.save_state"].apply(kwargs={"nonsense": 1})
        (entry,) = eager_app.dead_letters.list()
        assert entry["reason"].startswith("malformed save message")


    def test_namespaces_are_unique(persistence_namespace, persistence_settings):
        assert persistence_settings.namespace == persistence_namespace
        assert persistence_settings.eager
    """
)


def test_a_user_suite_runs_on_the_fixtures_without_any_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_agent=USER_SUITE)

    # A separate interpreter, as a user's run: the plugin must load from the entry point.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")

    result.assert_outcomes(passed=6)


def test_settings_are_overridden_in_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def persistence_settings(persistence_settings):
            return persistence_settings.model_copy(
                update={"ttl_seconds": 30.0, "handoff_mode": "buffered"}
            )
        """
    )
    pytester.makepyfile(
        test_overridden="""
        from datetime import timedelta

        from agents_persistence import AgentStateSnapshot

        def test_buffered_with_ttl(eager_checkpointer, persistence_store):
            assert eager_checkpointer.mode == "buffered"
            assert persistence_store.ttl == timedelta(seconds=30)
            eager_checkpointer.save_state("t", AgentStateSnapshot(), version=1)
            eager_checkpointer.flush(timeout=5)
            assert persistence_store.stored_versions(["t"]) == {"t": 1}
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)


def test_missing_fakeredis_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        import pytest

        @pytest.fixture(autouse=True)
        def no_fakeredis(monkeypatch):
            monkeypatch.setitem(sys.modules, "fakeredis", None)
        """
    )
    pytester.makepyfile(
        test_missing="""
        def test_uses_the_store(persistence_store):
            pass
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*need fakeredis with Lua support*pip install*"])


def test_the_fixtures_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing(): pass")

    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")

    result.stdout.fnmatch_lines_random(
        [
            "eager_checkpointer*",
            "*CeleryCheckpointer* whose saves run the real task inline*",
            "eager_app*",
            "persistence_store*",
            "persistence_settings*",
            "persistence_namespace*",
        ]
    )
