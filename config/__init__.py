"""Typed configuration for agents-persistence: one :class:`Settings` from the environment."""

from agents_persistence.config.settings import NAMESPACE_PATTERN, Settings, redact_url

__all__ = ["NAMESPACE_PATTERN", "Settings", "redact_url"]
