"""Fixtures for the web-API source adapters: the SAP B1 and Tally fakes, TLS material."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import scaled
from tests.fakes.sap_b1 import SapB1State, start_fake_sap_b1
from tests.fakes.tally import TallyState, start_fake_tally
from tests.fakes.tls import TlsFiles, make_tls


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def sap() -> Iterator[tuple[str, SapB1State]]:
    server, state = start_fake_sap_b1()
    yield server.url, state
    state.release.set()
    server.stop()


@pytest.fixture
def tally() -> Iterator[tuple[str, TallyState]]:
    server, state = start_fake_tally()
    yield server.url, state
    state.release.set()
    server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a worker thread (as the runner does); its result or error lands in the dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def join(thread: threading.Thread, seconds: float) -> None:
    thread.join(scaled(seconds))
    assert not thread.is_alive(), f"the worker thread did not finish within {seconds}s"


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full, so the kernel drops
    further SYNs and a client's connect() waits (as behind a firewall that drops packets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        while True:  # fill the accept queue until a connect no longer completes at once
            s = socket.socket()
            s.setblocking(False)
            fillers.append(s)
            if s.connect_ex(("127.0.0.1", port)) != 0 and not _established(s):
                break
            if len(fillers) > 16:
                pytest.skip("could not fill a listen backlog on this system")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def _established(sock: socket.socket) -> bool:
    _, writable, _ = select.select([], [sock], [], 0.2)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def syn_sent_to(port: int) -> bool:
    """This process has a connection to ``port`` still waiting for the handshake."""
    return any(
        c.status == psutil.CONN_SYN_SENT and c.raddr and c.raddr.port == port
        for c in psutil.Process().net_connections(kind="tcp")
    )


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` until it holds (fails the test after ``seconds``)."""
    end = time.monotonic() + scaled(seconds)
    while not condition():
        assert time.monotonic() < end, f"condition not met within {seconds}s"
        time.sleep(0.01)


def cancel_during_connect(stream: Any, port: int) -> BaseException | None:
    """Start ``stream`` against ``silent_port``'s ``port`` in a thread, wait until its
    connect is hanging (a SYN sent, no answer), cancel it, and return what ``start``
    raised (within 3 s of the cancel, or the test fails)."""
    thread, out = run_in_thread(stream.start)
    wait_for(lambda: syn_sent_to(port), 10)
    stream.cancel()
    join(thread, 3)
    stream.close()
    return out.get("error")


@pytest.fixture
def maria_db(mysql_url: str) -> Iterator[tuple[str, Any]]:
    """A fresh MariaDB database: its URL, and a PyMySQL connection to fill it (``sql_mode``
    '' on that session only, so zero and partial dates go in). Every source on it must be
    closed before this drops it (an open read-only transaction holds the DROP)."""
    from .test_mysql_guard import _connect

    name = "mc_vals_" + uuid.uuid4().hex[:10]
    conn = _connect(mysql_url)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"USE {name}")
        cur.execute("SET SESSION sql_mode = ''")
    try:
        yield mysql_url.rsplit("/", 1)[0] + "/" + name, conn
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


def fill(conn: Any, *sql: str) -> None:
    """Run each of ``sql`` on ``conn`` (a ``maria_db`` connection)."""
    with conn.cursor() as cur:
        for s in sql:
            cur.execute(s)


def job_rows(src: Any, sql: str) -> tuple[dict[str, str], list[dict[str, Any]], bytes]:
    """``sql`` run on ``src`` as a job would (``prepare``, ``start``, ``fetch``): the column
    types, the rows as the relay gets them, and their payload (object lines)."""
    import orjson

    from shared.rows import encode_objects

    stream = src.prepare({"sql": sql})
    rows: list[Any] = []
    try:
        stream.start()
        while batch := stream.fetch(1000):
            rows.extend(batch)
        columns = stream.columns
    finally:
        stream.close()
    payload = encode_objects([c["name"] for c in columns], rows)
    types = {c["name"]: c["type"] for c in columns}
    return types, [orjson.loads(line) for line in payload.splitlines()], payload
