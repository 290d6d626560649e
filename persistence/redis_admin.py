"""What tools need from a Redis store besides the contract: its dead-letter list, key
counts, server info, a ping, and clean-up of a namespace.

A mixin of :class:`~agents_persistence.redis_store.RedisCheckpointer`, kept apart so the
store's module holds only the save/load path. Every call goes through the store's retry
policy; SCAN walks only the namespace's own pattern, so nothing outside it is touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions as rex
from agents_persistence.connect import is_cluster
from agents_persistence.keys import Keys
from agents_persistence.lists import RedisList
from agents_persistence.retry import RetryPolicy

__all__ = ["RedisAdmin"]

#: Keys per SCAN page and per UNLINK.
_BATCH = 500


class RedisAdmin:
    """Tool-facing methods over ``client``, ``keys`` and ``retry`` (set by the store)."""

    if TYPE_CHECKING:
        client: redis.Redis
        retry: RetryPolicy

        @property
        def keys(self) -> Keys: ...

    def dead_letter_list(self, max_length: int, *, namespace: str | None = None) -> RedisList:
        """The list ``<namespace>:deadletter``, capped at ``max_length`` entries (another
        namespace's, if ``namespace`` names one)."""
        keys = self.keys if namespace is None else Keys(namespace)
        return RedisList(
            self.client,
            keys.dead_letters,
            max_length=max_length,
            retry=self.retry,
            name="dead-letter",
        )

    def key_count(self) -> int:
        """How many keys match ``<namespace>:*`` (one SCAN over the keyspace)."""
        return self.retry.call("count-keys", lambda: sum(1 for _ in self._scan()))

    def server_info(self) -> dict[str, object]:
        """Redis ``INFO`` (every default section); empty from a server without it."""
        try:
            info: dict[str, Any] = self.retry.call("info", self.client.info)
        except rex.ResponseError:  # fakeredis has no INFO
            return {}
        return dict(info)

    def primary_infos(self) -> dict[str, dict[str, object]]:
        """Redis ``INFO`` of every primary the store writes to: a cluster's every primary by
        ``host:port`` (:meth:`server_info` reads one node), else one entry, ``server`` (the
        single server, or the primary Sentinel names). Empty from a server without INFO."""
        client = self.client
        if not is_cluster(client):
            info = self.server_info()
            if not info:
                return {}
            return {"server": info}

        def read() -> dict[str, dict[str, object]]:
            cluster: Any = client
            return {
                node.name: dict(cluster.info(target_nodes=node))
                for node in cluster.get_primaries()
            }

        return self.retry.call("info", read)

    def ping(self) -> None:
        """Return once the server answers PING (within the retry policy)."""
        self.retry.call("ping", self.client.ping)

    def purge_threads(self, thread_ids: Sequence[str]) -> int:
        """UNLINK these threads' records and drop them from the index (no tombstone)."""
        if not thread_ids:
            return 0
        keys, removed = self.keys, 0
        for i in range(0, len(thread_ids), _BATCH):
            by_shard: dict[int, list[str]] = {}
            for tid in thread_ids[i : i + _BATCH]:
                by_shard.setdefault(keys.shard(tid), []).append(tid)
            # one transaction (one slot on a cluster: a shard's keys share its hash tag)
            groups = [list(by_shard)] if not is_cluster(self.client) else [[s] for s in by_shard]
            for group in groups:
                pipe = self.client.pipeline(transaction=True)
                for shard in group:
                    pipe.unlink(*(keys.thread(tid) for tid in by_shard[shard]))
                    pipe.zrem(keys.index_of(shard), *by_shard[shard])
                replies = self.retry.call("purge", pipe.execute)
                removed += sum(int(n) for n in replies[::2])
        return removed

    def drop_namespace(self) -> int:
        """UNLINK every key matching ``<namespace>:*``; returns how many."""

        def drop() -> int:
            removed, batch = 0, []
            for key in self._scan():
                batch.append(key)
                if len(batch) >= _BATCH:
                    removed += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                removed += int(self.client.unlink(*batch))
            return removed

        removed = self.retry.call("drop-namespace", drop)
        self._forget_layout()  # its layout key went too: read (or record) it afresh
        return removed

    def _forget_layout(self) -> None:
        raise NotImplementedError

    def _scan(self) -> Iterator[bytes]:
        yield from self.client.scan_iter(match=self.keys.pattern, count=1000)
