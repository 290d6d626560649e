"""Broker transports: kombu's Redis transport without its crash window."""
