"""Several relay nodes on one PostgreSQL store: node identity, owner leases, wake-ups.

Each relay process is a node with its own id (``MC_RELAY_NODE_ID``, else random per
process). The node that welcomes an agent owns the connector (``store/owners.py``) and
renews that lease every third of ``offline_after``; a connector taken over by another
node meanwhile has its stale session here closed, and connectors whose owner stopped
renewing (a dead node) are marked offline by whichever node notices first.

What happens on one node and matters to another travels as ``NOTIFY`` on one channel
(JSON payloads, ``n`` = the sending node, which ignores its own): ``kick`` (a job was
queued for a connector held elsewhere: dispatch), ``cancel`` (stop a job on the agent),
``revoke`` (close the revoked agent's socket), ``end_key`` (close a socket whose API key
stopped working), ``job`` (result readers of these jobs:
re-read the store), ``event`` (a tenant event for this node's subscribers). Sends are
batched by one task, so a stream of chunks costs one ``NOTIFY`` per batch, not per chunk.
A ``LISTEN`` that reconnects, the maintenance sweep (due jobs), the readers' poll and a
periodic check for cancelled jobs are the safety nets for anything missed. With SQLite
there is one node: nothing is sent, the leases are still kept.

The cluster takes what it works with when it starts (relay/app.py wires it): the store,
the notifier and the event bus it forwards, and this node's hub as ``LocalAgents``,
what it asks of the sessions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import orjson

from shared.protocol import CLOSE_CODES

from ..events import EventBus
from ..ids_and_times import now
from ..jobs.notify import JobNotifier
from ..store import Store, job_steps, owners, pg
from ..store.diskfull import StoreFull
from ..store.outage import StoreUnavailable
from . import connector_status
from .session import AgentSession

log = logging.getLogger("relay.cluster")
CHANNEL = "mini_connector"
RENEW_SLICE = 500  # connector leases renewed per store call
JOB_IDS_PER_MESSAGE = 100
# A job's progress (every stored chunk) is forwarded at most this often: a stream of
# chunks costs one NOTIFY a tick, not one store call and one commit each. Kicks, cancels,
# revocations and events still go at once.
JOB_NEWS_EVERY = 0.05


def new_node_id() -> str:
    return "node_" + secrets.token_hex(8)


class LocalAgents(Protocol):
    """The agent sessions on this node, as the cluster uses them (relay/agents/hub.py's ``Hub``)."""

    sessions: dict[str, AgentSession]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    async def cancel(self, connector_id: str, job_id: str, attempt: int) -> None: ...
    async def disconnect(self, connector_id: str, code: int, reason: str) -> None: ...
    def end_key(self, connector_id: str) -> None: ...


class Cluster:
    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or new_node_id()
        self._store: Store | None = None
        self._hub: LocalAgents | None = None
        self._notifier: JobNotifier | None = None
        self._events: EventBus | None = None
        self._kick: Callable[[str], Awaitable[None]] | None = None
        self._lease = 0.0  # seconds a connector's owner lease lasts (``offline_after``)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: pg.Listener | None = None
        self._outbox: list[dict[str, Any]] = []
        self._jobs: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel_sent: set[tuple[str, int]] = set()

    @property
    def _own_tail(self) -> str:
        """How every message this node sends ends (``_flush`` puts ``"n"`` last)."""
        return ',"n":' + orjson.dumps(self.node_id).decode() + "}"

    @property
    def shared(self) -> bool:
        """True when other nodes may share the store (PostgreSQL): messages are sent."""
        return self._listener is not None

    # ------------------------------------------------------------ life

    async def start(
        self, store: Store, hub: LocalAgents, notifier: JobNotifier, events: EventBus, *,
        lease: float, kick: Callable[[str], Awaitable[None]],
    ) -> None:  # fmt: skip
        """Run beside ``hub``; ``kick(connector_id)`` dispatches to an agent connected here,
        ``lease`` is how long a connector's owner lease lasts (renewed every third of it)."""
        self._store, self._hub, self._notifier, self._events = store, hub, notifier, events
        self._kick, self._lease = kick, lease
        self._loop = asyncio.get_running_loop()
        if not store.is_sqlite:
            self._listener = pg.Listener(store.engine, CHANNEL, self._from_thread, self._resync_from_thread)
            self._listener.start()
            await asyncio.to_thread(self._listener.ready.wait, 10.0)
            notifier.forward = self._forward_job
            events.forward = self._forward_event
            self._tasks.append(asyncio.create_task(self._send_loop(), name="relay-cluster-send"))
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="relay-cluster-leases"))
        log.info("relay node %s started (%s)", self.node_id, "shared store" if self.shared else "single node")

    async def stop(self) -> None:
        if self.shared:
            with contextlib.suppress(Exception):
                await self._flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None

    # ------------------------------------------------------------ sending

    def kick(self, connector_id: str) -> None:
        """A job was queued: the node holding the connector's agent dispatches it."""
        if self._hub is not None and connector_id not in self._hub.sessions:
            self._post({"k": "kick", "c": connector_id})

    def cancel(self, connector_id: str, job_id: str, attempt: int) -> None:
        if self._hub is not None and connector_id not in self._hub.sessions:
            self._post({"k": "cancel", "c": connector_id, "j": job_id, "a": attempt})

    def revoke(self, connector_id: str) -> None:
        self._post({"k": "revoke", "c": connector_id})

    def end_key(self, connector_id: str) -> None:
        """The connector's earlier API keys stopped working (rotation with grace 0)."""
        self._post({"k": "end_key", "c": connector_id})

    def _forward_job(self, job_id: str) -> None:
        self._jobs.add(job_id)
        self._wake.set()

    def _forward_event(self, tenant_id: str, event: dict[str, Any]) -> None:
        self._post({"k": "event", "t": tenant_id, "e": event})

    def _post(self, msg: dict[str, Any]) -> None:
        if self.shared:
            self._outbox.append(msg)
            self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._outbox:  # only job progress: let a tick's worth gather
                await asyncio.sleep(JOB_NEWS_EVERY)
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass  # said once by the store; the sweeps and the readers' polls cover it
            except Exception as exc:  # noqa: BLE001 - the sweeps and the readers' polls cover a lost one
                log.warning("cannot notify the other relay nodes: %s", type(exc).__name__)

    async def _flush(self) -> None:
        assert self._store is not None
        self._wake.clear()
        msgs, self._outbox = self._outbox, []
        ids, self._jobs = sorted(self._jobs), set()
        for i in range(0, len(ids), JOB_IDS_PER_MESSAGE):
            msgs.append({"k": "job", "j": ids[i : i + JOB_IDS_PER_MESSAGE]})
        if msgs:
            payloads = [orjson.dumps({**m, "n": self.node_id}).decode() for m in msgs]
            await self._store.run(pg.notify, CHANNEL, payloads)

    # ------------------------------------------------------------ receiving

    def _from_thread(self, payload: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.receive, payload)

    def _resync_from_thread(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._resync)

    def receive(self, payload: str) -> None:
        """One message from another node (on the event loop)."""
        hub, kick, notifier, events = self._hub, self._kick, self._notifier, self._events
        if payload.endswith(self._own_tail):
            return  # this node's own message, back through LISTEN
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if hub is None or kick is None or notifier is None or events is None:
            return  # not started
        if not isinstance(msg, dict) or msg.get("n") == self.node_id:
            return
        kind = msg.get("k")
        if kind == "job":
            for job_id in msg.get("j") or ():
                notifier.notify_local(job_id)
        elif kind == "event":
            events.deliver(msg["t"], msg["e"])
        elif kind == "kick" and msg["c"] in hub.sessions:
            hub.spawn(kick(msg["c"]))
        elif kind == "cancel" and msg["c"] in hub.sessions:
            hub.spawn(hub.cancel(msg["c"], msg["j"], msg["a"]))
        elif kind == "revoke" and msg["c"] in hub.sessions:
            hub.spawn(hub.disconnect(msg["c"], CLOSE_CODES["REVOKED"], "REVOKED"))
        elif kind == "end_key" and msg["c"] in hub.sessions:
            hub.end_key(msg["c"])

    def _resync(self) -> None:
        """The LISTEN connection was re-made: wake everything that may have missed news."""
        hub, kick, notifier = self._hub, self._kick, self._notifier
        if hub is None or kick is None or notifier is None:
            return
        for connector_id in list(hub.sessions):
            hub.spawn(kick(connector_id))
        for job_id in notifier.watched():
            notifier.notify_local(job_id)

    # ------------------------------------------------------------ owner leases

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._lease / 3))
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except (StoreFull, StoreUnavailable):
                pass  # said once by the store (relay/store/diskfull.py, outage.py)
            except Exception:
                log.exception("renewing connector leases failed; retrying next round")

    async def renew(self) -> None:
        """Renew this node's connector leases, close sessions another node took over, mark
        connectors of dead nodes offline, and re-send cancels that may have been missed."""
        hub, store, events = self._hub, self._store, self._events
        assert hub is not None and store is not None and events is not None
        at = now()
        live = [cid for cid, s in hub.sessions.items() if not s.dead]
        # Only welcomed sessions: one still being welcomed has not yet written this node as
        # the owner, so the previous owner's row (a node that just died) would read as a
        # takeover and close the agent that has just moved here.
        here = [cid for cid in live if hub.sessions[cid].welcomed]
        taken: list[str] = []
        # In slices: one store call for 10,000 agents held the (SQLite) writer long enough
        # to delay every dispatch behind it (docs/BENCHMARKS.md, the swarm).
        for i in range(0, len(here), RENEW_SLICE):
            taken += await store.run(owners.renew, self.node_id, here[i : i + RENEW_SLICE], at + self._lease)
        for connector_id in taken:
            log.info("connector %s moved to another relay node", connector_id, extra={"connector_id": connector_id})
            await hub.disconnect(connector_id, CLOSE_CODES["SESSION_REPLACED"], "SESSION_REPLACED")
        for row in await store.run(owners.lapsed_online, at, set(live)):
            events.publish(row["tenant_id"], "connector_status_changed",
                                 connector_status.changed(row["id"], connector_status.OFFLINE, row["last_seen"]))  # fmt: skip
        if self.shared:
            await self._recancel()

    async def _recancel(self) -> None:
        hub, store = self._hub, self._store
        assert hub is not None and store is not None
        held = {job_id: (cid, attempt) for cid, s in hub.sessions.items() for job_id, attempt in s.in_flight.items()}
        if not held:
            self._cancel_sent.clear()
            return
        for job_id, attempt in await store.run(job_steps.cancelled_of, list(held)):
            if (job_id, attempt) in self._cancel_sent:
                continue
            self._cancel_sent.add((job_id, attempt))
            await hub.cancel(held[job_id][0], job_id, attempt)
        self._cancel_sent &= {(j, a) for j, (_, a) in held.items()}


