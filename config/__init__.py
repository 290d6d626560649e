"""Typed configuration for agents-persistence: one :class:`Settings` from the environment."""

from config.settings import NAMESPACE_PATTERN, Settings, redact_url

__all__ = ["NAMESPACE_PATTERN", "Settings", "redact_url"]
