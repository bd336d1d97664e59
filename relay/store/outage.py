"""The store's database out of reach: said once, answered as 503 at once, and left when it is back.

A PostgreSQL store can go away for a while: a server restart or failover, a network blip,
a PgBouncer restart, ``pg_terminate_backend``. A store call that fails because the
connection is gone (``is_unavailable``: SQLAlchemy saw a disconnect, the driver's
connection-level errors, which carry no SQLSTATE, or SQLSTATE class 08 and 57P01-57P03)
raises ``StoreUnavailable``: a ``SERVICE_UNAVAILABLE`` (503, retryable, ``details.reason``
``STORE_UNAVAILABLE``), so an API call gets the contract's envelope and no stack, the
sweeper and the lease loop skip a round quietly, and an agent whose rows could not be
stored is sent to reconnect (it resends what was not acknowledged: relay/agents/hub.py).

``OutageGuard`` keeps the relay quick while the store is down: the first failure puts the
store in *outage mode* (one WARNING line, at most one a minute); until a call succeeds
again, at most one call at a time goes to the database, one a ``PROBE_EVERY`` second,
the rest fail at once with ``StoreUnavailable`` (no request waits for a connect timeout
behind the others). The first call that succeeds ends outage mode (one line says how long
it lasted). SQLAlchemy replaces the pooled connections the outage cut (a disconnect
invalidates the pool's older connections; an idle one is pinged before use: engine.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.errors import MCError

log = logging.getLogger("relay.store")

PROBE_EVERY = 1.0  # s between calls let through to the database during an outage
SAY_EVERY = 60.0  # at most one "store unreachable" line a minute
_PG_UNAVAILABLE = {"57P01", "57P02", "57P03"}  # admin_shutdown, crash_shutdown, cannot_connect_now


class StoreUnavailable(MCError):
    """The store's database cannot be reached right now: try again shortly."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str = "the relay's store is unreachable; try again shortly") -> None:
        super().__init__(message, details={"reason": "STORE_UNAVAILABLE", "retryAfter": 2})


def is_unavailable(exc: BaseException) -> bool:
    """Is this driver error (or SQLAlchemy's wrapper of one) a lost or refused connection
    to a PostgreSQL store (not an error of the statement)?"""
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None) or exc
    module = type(orig).__module__ or ""
    if not module.startswith("psycopg2"):
        return False
    code = getattr(orig, "pgcode", None)
    if code is None:  # the connection failed, not the statement: the server sent no SQLSTATE
        return type(orig).__name__ in ("OperationalError", "InterfaceError")
    return code.startswith("08") or code in _PG_UNAVAILABLE


def refused_for_good(exc: BaseException) -> bool:
    """A connection the server refused for a reason waiting will not change (a wrong
    password or database name, no pg_hba.conf entry): a relay starting gives up at once."""
    text = str(getattr(exc, "orig", None) or exc)
    return any(s in text for s in ("password authentication failed", "does not exist", "no pg_hba.conf entry"))


def first_line(exc: BaseException) -> str:
    orig: Any = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0][:200] if text else ''}"


class OutageGuard:
    """Outage mode of one store; used from the event loop only."""

    def __init__(self, probe_every: float = PROBE_EVERY) -> None:
        self.probe_every = probe_every
        self.since: float | None = None  # monotonic start of the outage, None when reachable
        self.back_at: float | None = None  # monotonic end of the last outage
        self._probing = False
        self._probed = 0.0
        self._said = -SAY_EVERY
        self._announced = False

    @property
    def down(self) -> bool:
        return self.since is not None

    def recent(self, seconds: float) -> bool:
        """Down now, or back for less than ``seconds``: while the store was out of reach
        no agent could connect or renew a lease, so a lease that ran out meanwhile says
        nothing about its agent until the agents have had one lease to come back."""
        return self.since is not None or (
            self.back_at is not None and time.monotonic() - self.back_at < seconds
        )

    def admit(self) -> bool:
        """May a call go to the database now? Always when reachable; in outage mode, one
        at a time, once a ``probe_every``. Raises ``StoreUnavailable`` when not; True
        means the call is the probe (``done`` must follow)."""
        if self.since is None:
            return False
        if self._probing or time.monotonic() - self._probed < self.probe_every:
            raise StoreUnavailable()
        self._probing, self._probed = True, time.monotonic()
        return True

    def done(self, probe: bool) -> None:
        if probe:
            self._probing = False

    def noticed(self, exc: BaseException) -> StoreUnavailable:
        """A call failed for want of a connection: enter outage mode (said once)."""
        if self.since is None:
            self.since = time.monotonic()
            self._probed = time.monotonic()
            if time.monotonic() - self._said >= SAY_EVERY:
                self._said, self._announced = time.monotonic(), True
                log.warning("the store's database is unreachable (%s): API calls answer 503 "
                            "SERVICE_UNAVAILABLE until it is back; retrying every %g s",
                            first_line(exc), self.probe_every)  # fmt: skip
        return StoreUnavailable()

    def reached(self) -> None:
        """A call succeeded: outage mode ends (said when its start was)."""
        if self.since is None:
            return
        lasted, self.since = time.monotonic() - self.since, None
        self.back_at = time.monotonic()
        if self._announced:
            self._announced = False
            log.warning("the store's database is reachable again (after %.1f s)", lasted)
