"""Unique namespaces on a shared server, and removing exactly their keys afterwards.

Tests never flush a database: the shared server may hold other people's data. Each test
writes under its own ``t-<uuid8>`` namespace and deletes ``<namespace>:*`` when done.
"""

from __future__ import annotations

import uuid

import redis
from agents_persistence.keys import Keys

__all__ = ["delete_namespace", "namespace_keys", "unique_namespace"]


def unique_namespace(prefix: str = "t") -> str:
    """A fresh namespace such as ``t-1a2b3c4d``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def namespace_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key of ``namespace`` (SCAN MATCH ``<namespace>:*``), sorted."""
    pattern = Keys(namespace).pattern
    return sorted(client.scan_iter(match=pattern, count=1000))


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    """UNLINK every key of ``namespace`` (and nothing else); returns how many."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=Keys(namespace).pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(client.unlink(*batch))
    return removed
