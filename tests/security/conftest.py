"""Security tests reuse the component fixtures (the relay in process, a fake agent that
speaks the real protocol) and the system harness (real processes)."""

from tests.relay.conftest import (  # noqa: F401 - fixtures
    agent,
    api,
    client,
    make_config,
    relay_port,
    start_relay,
)
