"""The agents' side of the relay: each live agent's session and what the relay does with
its messages (hub, session, messages, guard, heartbeats), the connector's status and key
lifecycle (connector_status, registration, kems, loglevel), the handshake limits, and the
other relay nodes sharing the agents (cluster)."""
