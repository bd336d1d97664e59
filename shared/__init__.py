"""What agent and relay must agree on, with no I/O: protocol, keys, crypto, rows, errors."""

__version__ = "0.1.0"
