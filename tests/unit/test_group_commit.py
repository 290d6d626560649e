"""Durable group commit: callers that arrive while a publish is in flight share the next one.

The broker is a function the test controls: it records each message's snapshots and can
hold a publish until the test lets it answer (or have it fail), so each step waits on a
condition, never on time. ``tests/integration/test_group_commit.py`` runs the same with a
real broker and worker.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest
from agents_persistence import (
    AgentStateSnapshot,
    AsyncRedisCheckpointer,
    HandOffError,
    InMemoryCheckpointer,
    RedisCheckpointer,
)
from agents_persistence.checkpoint import PreparedSave
from agents_persistence.config import Settings
from agents_persistence.tasks import AsyncCeleryCheckpointer, CeleryCheckpointer
from agents_persistence.tasks.client.group_commit import GroupCommit
from agents_persistence.tasks.worker.app import create_app
from kombu.exceptions import OperationalError

from tests.support import sample_state

pytestmark = pytest.mark.unit

WAIT = 30.0


class Broker:
    """Publishes groups; holds each while ``held``; fails them while ``failing``, or from
    call number ``fail_from`` on."""

    def __init__(self) -> None:
        self.messages: list[list[tuple[str, int]]] = []
        self.calls = 0
        self.held = False
        self.failing = False
        self.fail_from: int | None = None
        self._cond = threading.Condition()

    def publish(self, saves: list[PreparedSave]) -> None:
        with self._cond:
            self.calls += 1
            call = self.calls
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self.held, WAIT)
            if self.failing or (self.fail_from is not None and call >= self.fail_from):
                raise HandOffError("broker did not accept 1 snapshot(s): refused")
            self.messages.append([(s.thread_id, s.version) for s in saves])
            self._cond.notify_all()

    def hold(self) -> None:
        with self._cond:
            self.held = True

    def release(self) -> None:
        with self._cond:
            self.held = False
            self._cond.notify_all()

    def wait_calls(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls >= count, WAIT), self.calls


def save(thread_id: str, version: int, size: int = 0) -> PreparedSave:
    state = AgentStateSnapshot(scratchpad={"v": version, "pad": "x" * size})
    return InMemoryCheckpointer().prepare(thread_id, state, version=version)


def wait_until(condition: Any) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.001)):
        if condition():
            return
        done.wait(0.001)
    raise AssertionError("condition not met in time")


class Callers:
    """Threads calling ``commit`` one at a time, in a known order; records each outcome."""

    def __init__(self, commit: GroupCommit) -> None:
        self.commit = commit
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[tuple[str, int], BaseException | None] = {}

    def start(self, item: PreparedSave, *, lead: bool = False) -> None:
        """Start a caller and return once it is queued (``lead``: its publish is in flight,
        nothing else being)."""
        queued = self.commit.queued

        def call() -> None:
            try:
                self.commit.commit(item)
            except BaseException as exc:  # recorded, asserted by the test
                self.outcomes[item.thread_id, item.version] = exc
            else:
                self.outcomes[item.thread_id, item.version] = None

        thread = threading.Thread(target=call)
        thread.start()
        self.threads.append(thread)
        if lead:
            wait_until(lambda: self.commit.busy and self.commit.queued == 0)
        else:
            wait_until(lambda: self.commit.queued > queued)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()


@pytest.fixture
def broker() -> Iterator[Broker]:
    made = Broker()
    yield made
    made.release()


def test_a_lone_caller_publishes_at_once_and_alone(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=1 << 20)
    commit.commit(save("a", 1))
    commit.commit(save("a", 2))
    assert broker.messages == [[("a", 1)], [("a", 2)]]
    assert (commit.groups, commit.grouped, commit.busy, commit.queued) == (2, 2, False, 0)


def test_callers_arriving_during_a_publish_share_the_next_in_order(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=1 << 20)
    callers = Callers(commit)
    broker.hold()
    first = threading.Thread(target=commit.commit, args=(save("lead", 1),))
    first.start()
    broker.wait_calls(1)  # in flight: everyone after it queues
    arrivals = [save("t", 1), save("u", 1), save("t", 2), save("v", 1), save("t", 3)]
    for item in arrivals:
        callers.start(item)
    assert commit.queued == len(arrivals)
    assert all(t.is_alive() for t in callers.threads)  # nobody answered yet
    broker.release()
    first.join(WAIT)
    callers.join()
    # One message for all who queued, in arrival order; a thread's versions all kept.
    assert broker.messages == [[("lead", 1)], [(s.thread_id, s.version) for s in arrivals]]
    assert callers.outcomes == {(s.thread_id, s.version): None for s in arrivals}
    assert (commit.groups, commit.grouped, commit.busy) == (2, 6, False)


def test_groups_respect_the_snapshot_and_byte_limits(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=3, max_bytes=1 << 20)
    callers = Callers(commit)
    broker.hold()
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(1)
    for i in range(7):
        callers.start(save(f"t{i}", 1))
    broker.release()
    callers.join()
    assert [len(m) for m in broker.messages] == [1, 3, 3, 1]
    assert [tid for m in broker.messages for tid, _ in m] == ["lead"] + [f"t{i}" for i in range(7)]

    big = len(save("b", 1, size=4000).body)
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=2 * big + big // 2)
    callers = Callers(commit)
    broker.messages.clear()
    broker.hold()
    calls = broker.calls
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(calls + 1)
    for i in range(5):
        callers.start(save(f"b{i}", 1, size=4000))
    broker.release()
    callers.join()
    assert [len(m) for m in broker.messages] == [1, 2, 2, 1]


def test_a_snapshot_larger_than_the_byte_limit_still_goes_alone(broker: Broker) -> None:
    big = save("big", 1, size=5000)
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=len(big.body) // 2)
    callers = Callers(commit)
    broker.hold()
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(1)
    callers.start(big)
    callers.start(save("small", 1))
    broker.release()
    callers.join()
    assert broker.messages == [[("lead", 1)], [("big", 1)], [("small", 1)]]


def test_a_failed_publish_fails_every_caller_in_its_group_each_with_its_own_error(
    broker: Broker,
) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=1 << 20)
    callers = Callers(commit)
    broker.hold()
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(1)
    group = [save(f"t{i}", 1) for i in range(4)]
    for item in group:
        callers.start(item)
    broker.fail_from = 2  # the lead's message goes; the one carrying the group is refused
    broker.release()
    callers.join()
    assert callers.outcomes["lead", 1] is None
    errors = [callers.outcomes[s.thread_id, s.version] for s in group]
    assert all(isinstance(e, HandOffError) and "refused" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)  # one error object per caller
    # The group's leader raised the publish's error; the others each got one chained to it.
    roots = [e for e in errors if e is not None and e.__cause__ is None]
    assert len(roots) == 1
    assert all(e is roots[0] or e.__cause__ is roots[0] for e in errors if e is not None)
    assert (broker.calls, broker.messages) == (2, [[("lead", 1)]])
    assert (commit.busy, commit.queued) == (False, 0)
    # Nothing stuck: the next caller publishes at once.
    broker.fail_from = None
    commit.commit(save("after", 1))
    assert broker.messages == [[("lead", 1)], [("after", 1)]]


def test_callers_queued_behind_a_failed_publish_share_its_outcome_at_once(
    broker: Broker,
) -> None:
    commit = GroupCommit(broker.publish, max_batch=2, max_bytes=1 << 20)
    callers = Callers(commit)
    broker.hold()
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(1)
    queued = [save(f"t{i}", 1) for i in range(5)]  # more than one group's worth
    for item in queued:
        callers.start(item)
    broker.failing = True  # the broker is down: the lead's message is refused
    broker.release()
    callers.join()
    assert broker.calls == 1  # nobody queued behind it waited for a second attempt
    assert all(isinstance(e, HandOffError) for e in callers.outcomes.values())
    assert len(callers.outcomes) == 6
    assert (commit.busy, commit.queued) == (False, 0)


def test_a_recover_step_answers_a_failed_group_and_everyone_behind_it(broker: Broker) -> None:
    recovered: list[list[tuple[str, int]]] = []

    def write_through(saves: list[PreparedSave], error: BaseException) -> None:
        assert isinstance(error, HandOffError)
        recovered.append([(s.thread_id, s.version) for s in saves])

    commit = GroupCommit(broker.publish, max_batch=2, max_bytes=1 << 20, recover=write_through)
    callers = Callers(commit)
    broker.hold()
    callers.start(save("lead", 1), lead=True)
    broker.wait_calls(1)
    for i in range(3):
        callers.start(save(f"t{i}", 1))
    broker.failing = True
    broker.release()
    callers.join()
    assert recovered == [[("lead", 1), ("t0", 1), ("t1", 1), ("t2", 1)]]
    assert set(callers.outcomes.values()) == {None}
    # Nothing stuck: the next caller publishes at once.
    broker.failing = False
    commit.commit(save("after", 1))
    assert broker.messages == [[("after", 1)]]


def test_an_unexpected_error_reaches_the_leader_as_is_and_the_others_typed(
    broker: Broker,
) -> None:
    held = threading.Event()
    release = threading.Event()

    def publish(saves: list[PreparedSave]) -> None:
        if saves[0].thread_id == "lead":
            held.set()
            assert release.wait(WAIT)
            raise ValueError("not JSON")

    commit = GroupCommit(publish, max_batch=500, max_bytes=1 << 20)
    callers = Callers(commit)
    callers.start(save("lead", 1), lead=True)
    assert held.wait(WAIT)
    callers.start(save("x", 1))
    release.set()
    callers.join()
    assert isinstance(callers.outcomes["lead", 1], ValueError)
    error = callers.outcomes["x", 1]  # queued behind it: the same outcome, typed
    assert isinstance(error, HandOffError)
    assert "ValueError: not JSON" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_coroutines_share_messages_without_blocking_the_loop(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=16 << 20)

    async def main() -> tuple[int, list[BaseException | None]]:
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        with ThreadPoolExecutor(2) as pool:
            broker.hold()
            saves = [save(f"c{i}", 1) for i in range(1000)]
            tasks = [asyncio.create_task(commit.join(s, pool.submit)) for s in saves]
            while broker.calls < 1:  # a group in flight, the rest queued behind it
                await asyncio.sleep(0.001)
            assert commit.busy
            assert commit.queued > 0
            start = ticks
            while ticks < start + 5:  # the loop runs on while the publish waits
                await asyncio.sleep(0.001)
            broker.release()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        await ticker
        return ticks, list(outcomes)

    _, outcomes = asyncio.run(main())
    assert outcomes == [None] * 1000
    sizes = [len(m) for m in broker.messages]
    assert (sum(sizes), max(sizes) <= 500, len(sizes) <= 3) == (1000, True, True)
    assert sorted(tid for m in broker.messages for tid, _ in m) == sorted(
        f"c{i}" for i in range(1000)
    )


def test_a_coroutines_publishing_thread_goes_on_while_anyone_is_queued(broker: Broker) -> None:
    threads: list[int] = []
    publish = broker.publish

    def recording(saves: list[PreparedSave]) -> None:
        threads.append(threading.get_ident())
        publish(saves)

    commit = GroupCommit(recording, max_batch=500, max_bytes=16 << 20)

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            broker.hold()
            first = asyncio.create_task(commit.join(save("first", 1), pool.submit))
            while broker.calls < 1:
                await asyncio.sleep(0.001)
            rest = [asyncio.create_task(commit.join(save(f"c{i}", 1), pool.submit))
                    for i in range(600)]  # fmt: skip
            while commit.queued < 600:
                await asyncio.sleep(0.001)
            broker.release()
            await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert [len(m) for m in broker.messages] == [1, 500, 100]
    assert len(set(threads)) == 1  # one thread published all three: no hop between groups
    assert (commit.busy, commit.queued) == (False, 0)


def test_a_failed_group_fails_every_coroutine_in_it(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=16 << 20)

    async def main() -> list[BaseException | None]:
        with ThreadPoolExecutor(2) as pool:
            broker.hold()
            broker.failing = True
            tasks = [
                asyncio.create_task(commit.join(save(f"c{i}", 1), pool.submit)) for i in range(50)
            ]
            while broker.calls < 1:
                await asyncio.sleep(0.001)
            broker.release()
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = asyncio.run(main())
    assert all(isinstance(e, HandOffError) and "refused" in str(e) for e in outcomes)
    assert len({id(e) for e in outcomes}) == 50
    assert (commit.busy, commit.queued) == (False, 0)


def test_a_cancelled_coroutine_leaves_the_queue(broker: Broker) -> None:
    commit = GroupCommit(broker.publish, max_batch=500, max_bytes=16 << 20)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            broker.hold()
            lead = asyncio.create_task(commit.join(save("lead", 1), pool.submit))
            while not commit.busy:
                await asyncio.sleep(0.001)
            broker.wait_calls(1)
            gone = asyncio.create_task(commit.join(save("gone", 1), pool.submit))
            kept = asyncio.create_task(commit.join(save("kept", 1), pool.submit))
            while commit.queued < 2:
                await asyncio.sleep(0.001)
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert commit.queued == 1
            broker.release()
            await lead
            await kept

    asyncio.run(main())
    assert broker.messages == [[("lead", 1)], [("kept", 1)]]


def test_a_child_forked_during_a_publish_starts_with_nothing_in_flight(broker: Broker) -> None:
    published: list[str] = []

    def publish(saves: list[PreparedSave]) -> None:
        if os.getpid() == parent:
            broker.publish(saves)
        else:
            published.extend(s.thread_id for s in saves)

    parent = os.getpid()
    commit = GroupCommit(publish, max_batch=500, max_bytes=1 << 20)
    broker.hold()
    leader = threading.Thread(target=commit.commit, args=(save("lead", 1),))
    leader.start()
    broker.wait_calls(1)
    assert commit.busy
    pid = os.fork()
    if pid == 0:  # the child: the parent's publish in flight is not here
        code = 1
        try:
            commit.commit(save("child", 1))
            code = 0 if published == ["child"] and not commit.busy else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    broker.release()
    leader.join(WAIT)
    assert os.waitstatus_to_exitcode(status) == 0
    assert broker.messages == [[("lead", 1)]]


# -- through the clients --------------------------------------------------------------------------
@pytest.fixture
def settings(namespace: str) -> Settings:
    return Settings(_env_file=None, eager=True, namespace=namespace, broker_url="memory://")


def test_twenty_threads_of_durable_saves_all_land_each_with_its_own_handle(
    settings: Settings,
) -> None:
    store = RedisCheckpointer(fakeredis.FakeRedis(), namespace=settings.namespace)
    client = CeleryCheckpointer(store, create_app(settings, store=store), mode="durable")
    handles: dict[str, list[tuple[str, int]]] = {}

    def agent(i: int) -> None:
        tid = f"agent-{i}"
        handles[tid] = []
        for v in range(1, 11):
            handle = client.save_state(tid, sample_state(f"{tid}@{v}"), version=v)
            handles[tid].append((handle.thread_id, handle.version))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    client.flush(timeout=WAIT)
    assert handles == {f"agent-{i}": [(f"agent-{i}", v) for v in range(1, 11)] for i in range(20)}
    assert (client.handed_off, client.published_snapshots) == (200, 200)
    assert 1 <= client.published_messages <= 200
    for i in range(20):
        assert store.load_state(f"agent-{i}") == sample_state(f"agent-{i}@10")
    client.close()


def test_a_refused_group_fails_its_callers_typed_and_hands_nothing_off(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"eager": False})
    store = RedisCheckpointer(fakeredis.FakeRedis(), namespace=settings.namespace)
    client = CeleryCheckpointer(store, create_app(settings, store=store), mode="durable")
    assert client._group is not None
    sent: list[str] = []
    refusing = threading.Event()
    in_flight = threading.Event()
    release = threading.Event()

    def send(name: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        if kwargs.get("thread_id") == "lead":
            in_flight.set()
            assert release.wait(WAIT)
        if refusing.is_set():
            raise OperationalError("connection refused")
        sent.append(name)

    monkeypatch.setattr(client._sender, "send", send)
    outcomes: dict[str, BaseException | None] = {}

    def call(tid: str) -> None:
        try:
            client.save_state(tid, sample_state(tid), version=1)
        except BaseException as exc:
            outcomes[tid] = exc
        else:
            outcomes[tid] = None

    lead = threading.Thread(target=call, args=("lead",))
    lead.start()
    assert in_flight.wait(WAIT)
    others = [threading.Thread(target=call, args=(f"t{i}",)) for i in range(5)]
    for i, t in enumerate(others):
        t.start()
        wait_until(lambda i=i: client._group is not None and client._group.queued == i + 1)
    refusing.set()  # the lead's message: it and every caller queued behind it fail, typed
    release.set()
    for t in [lead, *others]:
        t.join(WAIT)
    assert sorted(outcomes) == ["lead"] + [f"t{i}" for i in range(5)]
    assert all(isinstance(e, HandOffError) for e in outcomes.values())
    assert all("connection refused" in str(e) for e in outcomes.values())
    assert (client.handed_off, client.published_messages, client.pending) == (0, 0, {})
    assert sent == []
    client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_thousand_coroutines_of_durable_saves_share_messages(settings: Settings) -> None:
    server = fakeredis.FakeServer()
    store = RedisCheckpointer(fakeredis.FakeRedis(server=server), namespace=settings.namespace)
    handoff = CeleryCheckpointer(store, create_app(settings, store=store), mode="durable")
    aredis = fakeredis.aioredis.FakeRedis(server=server, max_connections=100)
    async with AsyncCeleryCheckpointer(
        handoff, AsyncRedisCheckpointer(aredis, namespace=settings.namespace)
    ) as client:
        handles = await asyncio.gather(*(
            client.save_state(f"c{i}", sample_state(f"c{i}"), version=1) for i in range(1000)
        ))  # fmt: skip
        assert [(h.thread_id, h.version) for h in handles] == [(f"c{i}", 1) for i in range(1000)]
        assert (handoff.handed_off, handoff.published_snapshots) == (1000, 1000)
        assert handoff.published_messages < 1000 // 4  # groups, not one message per save
        await client.flush(timeout=WAIT)
        assert await client.store.stored_versions([f"c{i}" for i in range(1000)]) == {
            f"c{i}": 1 for i in range(1000)
        }
        await client.store.aclose()
