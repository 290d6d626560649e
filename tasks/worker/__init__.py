"""The worker side: the Celery app and its options, the task bodies, the consumer that
dead-letters what Celery cannot decode, and the dead-letter list."""
