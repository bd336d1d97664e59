"""The one small interface every source adapter implements, and what it returns.

A ``Source`` is a configured local system. ``test()`` and ``discover()`` answer small
questions; ``prepare(request)`` returns a ``QueryStream`` the runner drives from a worker
thread (``start`` executes, ``fetch(n)`` reads a batch, ``cancel`` may be called from any
thread at any time and stops the work at the database). ``query(request, batch_size)`` is
the plain form: ``(columns, iterator of row batches)``. Adapters translate their driver's
exceptions into ``shared.errors.JobError`` with the contract's codes at this edge.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from shared.errors import JobError

Column = dict[str, str]  # {"name": ..., "type": ...}
Row = Sequence[Any]

TEST_COLUMNS: list[Column] = [
    {"name": "connected", "type": "boolean"},
    {"name": "latencyMs", "type": "integer"},
    {"name": "serverVersion", "type": "string"},
    {"name": "tablesFound", "type": "integer"},
]
DISCOVER_COLUMNS: list[Column] = [
    {"name": "schema", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "kind", "type": "string"},
    {"name": "rowEstimate", "type": "integer"},
    {"name": "columns", "type": "json"},
    {"name": "primaryKey", "type": "json"},
    {"name": "foreignKeys", "type": "json"},
]


def test_row(result: dict[str, Any]) -> list[Any]:
    return [result.get(c["name"]) for c in TEST_COLUMNS]


def discover_rows(tables: list[dict[str, Any]]) -> list[list[Any]]:
    return [[t.get(c["name"]) for c in DISCOVER_COLUMNS] for t in tables]


class QueryStream(abc.ABC):
    """One running query. Driven by one worker thread; ``cancel`` from anywhere."""

    columns: list[Column]

    @abc.abstractmethod
    def start(self) -> None:
        """Execute the statement (blocking); afterwards ``columns`` is set."""

    @abc.abstractmethod
    def fetch(self, n: int) -> list[Row]:
        """Up to ``n`` rows (blocking); an empty list means the result is exhausted."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the statement at the database. Thread-safe, idempotent, never raises."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (never raises)."""


class Batches:
    """An iterator of row batches whose ``size`` the reader may change between batches."""

    def __init__(self, stream: QueryStream, size: int) -> None:
        self.stream = stream
        self.size = max(1, size)
        self._done = False

    def __iter__(self) -> Iterator[list[Row]]:
        return self

    def __next__(self) -> list[Row]:
        if self._done:
            raise StopIteration
        rows = self.stream.fetch(self.size)
        if not rows:
            self.close()
            raise StopIteration
        return rows

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.stream.close()


class Source(abc.ABC):
    """A configured local system the agent may read from."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.type = kind
        self._active: set[QueryStream] = set()
        self._mutex = threading.Lock()

    @abc.abstractmethod
    def test(self) -> dict[str, Any]:
        """``{"connected", "latencyMs", "serverVersion", "tablesFound"}``, or a JobError."""

    @abc.abstractmethod
    def discover(self, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One dict per table: schema, name, kind, rowEstimate, columns, primaryKey, foreignKeys."""

    @abc.abstractmethod
    def _open(self, request: dict[str, Any], timeout: float | None) -> QueryStream:
        """Build (not start) a stream for ``request``; validate it first."""

    def prepare(self, request: Any, *, timeout: float | None = None) -> QueryStream:
        if not isinstance(request, dict):
            raise JobError("QUERY_FAILED", "the query must be a JSON object", retryable=False)
        stream = self._open(request, timeout)
        with self._mutex:
            self._active.add(stream)
        original_close = stream.close

        def close() -> None:
            with self._mutex:
                self._active.discard(stream)
            # This wrapper (held by the stream) holds the stream: once closed, the stream's
            # own ``close`` serves again, so the pair is freed without the garbage collector.
            vars(stream).pop("close", None)
            original_close()

        stream.close = close  # type: ignore[method-assign]
        return stream

    def query(
        self, request: Any, batch_size: int = 1000, *, timeout: float | None = None
    ) -> tuple[list[Column], Batches]:
        stream = self.prepare(request, timeout=timeout)
        try:
            stream.start()
        except BaseException:
            stream.close()
            raise
        return stream.columns, Batches(stream, batch_size)

    def cancel(self) -> None:
        """Cancel every query running on this source."""
        with self._mutex:
            active = list(self._active)
        for stream in active:
            stream.cancel()

    def close(self) -> None:
        """Stop and release every open stream (shutdown: their readers are abandoned)."""
        with self._mutex:
            active = list(self._active)
        for stream in active:
            stream.cancel()
            stream.close()
