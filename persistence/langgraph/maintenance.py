"""The saver's whole-thread operations: delete, delete by run, prune and copy.

Like :mod:`.operations`, each is a generator of :class:`~.operations.Batch` es, run by
:mod:`.driver` on either client. What must be atomic for one thread is one Lua script (or one
MULTI/EXEC) on that thread's slot; the run sets, which live in slots of their own, are
updated in the next round trip (a run set naming a thread that no longer holds that run's
checkpoints is harmless: deleting by run finds nothing there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from agents_persistence.langgraph import records as rec
from agents_persistence.langgraph.keys import ThreadKeys
from agents_persistence.langgraph.operations import Batch, Op, Operations
from agents_persistence.langgraph.scripts import saver_script
from agents_persistence.validation import check_thread_id

__all__ = ["PRUNE_STRATEGIES", "Maintenance"]

#: ``prune`` strategies: keep each namespace's newest checkpoint (and what its delta channels
#: need), or delete everything.
PRUNE_STRATEGIES = ("keep_latest", "delete")


def _flat(mapping: dict[Any, Any]) -> list[Any]:
    return [x for pair in mapping.items() for x in pair]


def _scored(members: Iterable[Any]) -> list[Any]:
    return [x for m in members for x in (0, m)]


class Maintenance(Operations):
    """:class:`Operations` plus the whole-thread operations."""

    def _thread(self, thread_id: str) -> tuple[str, ThreadKeys]:
        tid = check_thread_id(str(thread_id))
        return tid, self.keys.thread(tid)

    def _drop(self, tk: ThreadKeys) -> tuple[Any, ...]:
        return ("EVALSHA", saver_script("drop").sha, 2, tk.registry, tk.runs, *tk.prefixes())

    def _forget(self, thread_id: str, runs: Iterable[bytes]) -> list[tuple[Any, ...]]:
        return [("SREM", self.keys.run(r.decode()), thread_id) for r in runs]

    def delete_thread(self, thread_id: str) -> Op[None]:
        """Delete every checkpoint, write and blob of a thread."""
        yield from self._delete_threads([thread_id], "delete_thread")

    def _delete_threads(self, thread_ids: Sequence[str], what: str) -> Op[None]:
        threads = [self._thread(t) for t in thread_ids]
        if not threads:
            return
        reply = yield Batch(what, [self._drop(tk) for _, tk in threads])
        forget = [c for (tid, _), runs in zip(threads, reply, strict=True)
                  for c in self._forget(tid, runs)]  # fmt: skip
        if forget:
            yield Batch(what, forget)

    def delete_for_runs(self, run_ids: Sequence[str]) -> Op[None]:
        """Delete the checkpoints (and their writes) the given runs made, in every thread."""
        runs = [str(r) for r in run_ids]
        if not runs:
            return
        reply = yield Batch("delete_for_runs", [("SMEMBERS", self.keys.run(r)) for r in runs])
        by_thread: dict[str, list[str]] = {}
        for run, members in zip(runs, reply, strict=True):
            for tid in members:
                by_thread.setdefault(tid.decode(), []).append(run)
        script = saver_script("drop_runs").sha
        commands: list[tuple[Any, ...]] = []
        for tid, thread_runs in sorted(by_thread.items()):
            tk = self.keys.thread(tid)
            commands.append(
                ("EVALSHA", script, 2, tk.registry, tk.runs, *tk.prefixes(), *thread_runs)
            )
        if commands:
            yield Batch("delete_for_runs", commands)
        yield Batch("delete_for_runs", [("UNLINK", self.keys.run(r)) for r in runs])

    def prune(self, thread_ids: Sequence[str], strategy: str = "keep_latest") -> Op[None]:
        """Prune threads: ``keep_latest`` keeps each checkpoint namespace's newest checkpoint
        and the ancestors its delta channels are rebuilt from; ``delete`` deletes all."""
        if strategy not in PRUNE_STRATEGIES:
            raise ValueError(f"unknown prune strategy {strategy!r}; use one of {PRUNE_STRATEGIES}")
        if strategy == "delete":
            yield from self._delete_threads(thread_ids, "prune")
            return
        threads = [self._thread(t) for t in thread_ids]
        if not threads:
            return
        heads = saver_script("heads").sha
        reply = yield Batch(
            "prune",
            [("EVALSHA", heads, 1, tk.registry, *tk.prefixes()[:2]) for _, tk in threads],
        )
        script = saver_script("prune").sha
        commands: list[tuple[Any, ...]] = []
        for (_, tk), flat in zip(threads, reply, strict=True):
            args: list[Any] = []
            for i in range(0, len(flat), 3):
                ns, head, record = flat[i], flat[i + 1], flat[i + 2]
                _, typed_meta = rec.decode_record(record)
                metadata = self.serde.loads_typed(typed_meta)
                delta = sorted(metadata.get("counters_since_delta_snapshot") or {})
                args += [ns, head, len(delta), *delta]
            if args:
                commands.append(("EVALSHA", script, 2, tk.registry, tk.runs, *tk.prefixes(),
                                 *args))  # fmt: skip
        if commands:
            yield Batch("prune", commands)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> Op[None]:
        """Copy every checkpoint, write and blob of one thread into another (added to what
        the target holds; a checkpoint with the same namespace and id is replaced)."""
        _, src = self._thread(source_thread_id)
        dst_id, dst = self._thread(target_thread_id)
        reply = yield Batch("copy_thread", [("HKEYS", src.registry)])
        namespaces = sorted(k.decode() for k in reply[0])
        if not namespaces:
            return
        reads: list[tuple[Any, ...]] = [("ZRANGE", src.runs, 0, -1)]
        for ns in namespaces:
            reads += [
                ("ZRANGE", src.ids(ns), 0, -1),
                ("HGETALL", src.checkpoints(ns)),
                ("HGETALL", src.links(ns)),
                ("HGETALL", src.blobs(ns)),
                ("ZRANGE", src.writes(ns), 0, -1),
            ]
        data = yield Batch("copy_thread", reads, transaction=True)
        run_members: list[bytes] = data[0]
        writes: list[tuple[Any, ...]] = []
        for n, ns in enumerate(namespaces):
            ids, checkpoints, links, blobs, pending = data[1 + 5 * n : 6 + 5 * n]
            if not ids:
                continue
            writes += [
                ("HSET", dst.registry, ns, dst_id),
                ("ZADD", dst.ids(ns), *_scored(ids)),
                ("HSET", dst.checkpoints(ns), *_flat(checkpoints)),
                ("HSET", dst.links(ns), *_flat(links)),
            ]
            if blobs:
                writes.append(("HSET", dst.blobs(ns), *_flat(blobs)))
            if pending:
                writes.append(("ZADD", dst.writes(ns), *_scored(pending)))
        if not writes:
            return
        runs = sorted({rec.split(m, 1)[0][0] for m in run_members})
        run_commands: list[tuple[Any, ...]] = []
        if run_members:
            writes.append(("ZADD", dst.runs, *_scored(run_members)))
        for run in runs:
            run_commands.append(("SADD", self.keys.run(run.decode()), dst_id))
            if self.layout.ttl_ms is not None:
                run_commands.append(("PEXPIRE", self.keys.run(run.decode()), self.layout.ttl_ms))
        if self.layout.ttl_ms is not None:
            writes.append(self.layout.touch(dst))
        if self.layout.single_node:
            yield Batch("copy_thread", writes + run_commands, transaction=True)
        else:
            yield Batch("copy_thread", writes, transaction=True)
            if run_commands:
                yield Batch("copy_thread", run_commands)
