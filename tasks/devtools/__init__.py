"""Development tooling shared by the demo, the tests and bench/: a private redis-server and
real Celery worker processes, started and ended by PID."""
