"""``python -m tests.support [URL]``: print RedisCheckpointer's round trips per call.

Writes under a fresh namespace of the server at URL (default: the local one) and deletes
exactly those keys afterwards.
"""

from __future__ import annotations

import sys

import redis

from tests.support.env import real_redis_url
from tests.support.namespaces import delete_namespace, unique_namespace
from tests.support.roundtrips import measure_checkpointer_round_trips


def main(argv: list[str]) -> int:
    """Measure and print the figures; returns the exit status."""
    url = argv[0] if argv else real_redis_url()
    namespace = unique_namespace("roundtrips")
    try:
        figures = measure_checkpointer_round_trips(url, namespace)
    finally:
        client = redis.Redis.from_url(url)
        try:
            delete_namespace(client, namespace)
        finally:
            client.close()
    for what, trips in figures.items():
        print(f"{what:>14}: {trips} round trip(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
