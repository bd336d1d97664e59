"""The mini-relay cloud service."""
