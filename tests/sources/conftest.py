"""Fixtures for the web-API source adapters: the SAP B1 and Tally fakes, TLS material."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
