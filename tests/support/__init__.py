"""Shared test support: private redis-servers, namespaces, round-trip counting, samples.

Import from here in any test package (``from tests.support import RedisServer``).
"""

from tests.support.env import in_ci, real_redis_url, redis_answers, skip_or_fail
from tests.support.namespaces import delete_namespace, namespace_keys, unique_namespace
from tests.support.redis_server import (
    RedisServer,
    RedisServerError,
    find_redis_server,
    free_port,
)
from tests.support.roundtrips import (
    RoundTripCounter,
    counting_connection_class,
    measure_checkpointer_round_trips,
)
from tests.support.samples import SEED_JSON, odd_thread_ids, sample_state

__all__ = [
    "SEED_JSON",
    "RedisServer",
    "RedisServerError",
    "RoundTripCounter",
    "counting_connection_class",
    "delete_namespace",
    "find_redis_server",
    "free_port",
    "in_ci",
    "measure_checkpointer_round_trips",
    "namespace_keys",
    "odd_thread_ids",
    "real_redis_url",
    "redis_answers",
    "sample_state",
    "skip_or_fail",
    "unique_namespace",
]
