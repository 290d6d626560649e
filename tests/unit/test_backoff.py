"""The task retry countdowns: jittered within their ceiling, and different in forked children."""

from __future__ import annotations

import os

import pytest
from agents_persistence.backoff import Backoff

pytestmark = pytest.mark.unit


def test_delays_stay_within_half_and_whole_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    for retry in range(10):
        top = backoff.ceiling(retry)
        assert all(top / 2 <= backoff.delay(retry) <= top for _ in range(50))


def test_forked_children_draw_different_countdowns() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    draws: list[float] = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one draw, then exit without running pytest's teardown
            os.write(write, repr(backoff.delay(5)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            draws.append(float(pipe.read()))
        os.waitpid(pid, 0)
    assert draws[0] != draws[1]
