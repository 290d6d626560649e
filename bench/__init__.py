"""Performance benchmarks (scripts, not tests): ``python -m bench.run [--quick] [--only P1,P3]``.

One module per section (``p1_handoff`` ... ``p6_memory``); :mod:`bench.run` starts what they
need (a private ``redis-server``, real ``celery worker`` processes), shows progress, prints a
table per section and writes ``bench/results/latest.json`` and ``latest.md``.
"""
