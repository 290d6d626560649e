"""The agent side: :class:`~agents_persistence.tasks.CeleryCheckpointer`, the buffer that
batches buffered hand-offs, and the sender that publishes task messages."""
