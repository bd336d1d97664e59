"""The agent's one outbound link to the relay: the session (connect, hello, message loop,
heartbeats, reconnect with backoff), its state table, the transport (TLS trust, proxy),
the relay URL list and the host figures heartbeats carry."""
