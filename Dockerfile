# The image of the worker and beat services in compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY persistence ./persistence
COPY tasks ./tasks
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/agents-persistence \
    && chown app:app /var/lib/agents-persistence

# Never root: Celery workers execute what arrives on the broker.
USER app
WORKDIR /var/lib/agents-persistence
CMD ["celery", "-A", "agents_persistence.tasks", "worker", "--loglevel", "INFO", "--concurrency", "2"]
