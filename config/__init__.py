"""Typed configuration for agents-persistence: one :class:`Settings` from the environment."""

from agents_persistence.config.settings import Settings, redact_url

__all__ = ["Settings", "redact_url"]
