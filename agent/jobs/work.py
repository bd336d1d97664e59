"""The work of one job, apart from its bookkeeping: open its sealed query, then read.

``open_request`` opens the HPKE seal (a job the agent cannot open fails with
``DECRYPTION_FAILED``), through an ``Opener`` that tries first the key that opened the
last job; ``reader`` returns the blocking function the job's worker thread
runs: the source's ``test``/``discover``, or a query stream started on the source. The
runner (``agent.jobs.runner``) owns the job's life around these.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.crypto import (
    PrivateKey,
    fits_hybrid,
    job_infos,
    open_job,
    open_sealed_first,
    parse_query,
)
from shared.errors import DecryptionFailed, JobError

from ..sources.base import (
    DISCOVER_COLUMNS,
    TEST_COLUMNS,
    Batches,
    Column,
    Source,
    discover_rows,
    test_row,
)
from .job import Job


class Opener:
    """The agent's opening keys, and which (key, info form) opened the last job, for each
    length class of sealed blob (hybrid-sized or not): that pair is tried first. A relay
    seals every job of a connector the same way, so a usual job costs one HPKE decryption
    instead of up to three (X25519 with both infos, then the hybrid key). Which blobs open
    and which fail (``DECRYPTION_FAILED``) does not change: every pair is still tried."""

    def __init__(self, keys: PrivateKey | Sequence[PrivateKey]) -> None:
        self.source = keys
        self.keys: list[PrivateKey] = list(keys) if isinstance(keys, Sequence) else [keys]
        self._last: dict[bool, tuple[int, int]] = {}

    def open_job(self, blob: bytes, connector_id: str, job_id: str) -> Any:
        kind = fits_hybrid(len(blob))
        plain, self._last[kind] = open_sealed_first(
            blob, self.keys, job_infos(connector_id, job_id), self._last.get(kind)
        )
        return parse_query(plain)


def open_request(
    job: Job, sealed: str | None, private_key: PrivateKey | Sequence[PrivateKey] | Opener,
    connector_id: str,
) -> Any:  # fmt: skip
    if sealed is None:
        if job.operation == "query":
            raise JobError("QUERY_FAILED", "the job carries no query", retryable=False)
        return {}
    try:
        blob = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionFailed("the sealed query is not valid base64") from exc
    if isinstance(private_key, Opener):
        return private_key.open_job(blob, connector_id, job.job_id)
    return open_job(blob, private_key, connector_id, job.job_id)


def reader(
    job: Job, request: Any, timeout: float | None, get_source: Callable[[str], Source],
    begun: Callable[[], None] | None = None,
) -> Callable[[], tuple[list[Column], Iterator[Sequence[Any]]]]:
    """The blocking part of a job, run in its worker thread (the first SQL job's
    imports, the statement guard, the connection and the statement all block).
    ``begun`` is called once the source is found, before the work itself."""

    def read() -> tuple[list[Column], Iterator[Sequence[Any]]]:
        source = get_source(job.source)
        if begun is not None:
            begun()
        if job.operation == "test":
            return TEST_COLUMNS, iter([[test_row(source.test())]])
        if job.operation == "discover":
            req = request if isinstance(request, dict) else {}
            return DISCOVER_COLUMNS, iter([discover_rows(source.discover(req))])
        stream = source.prepare(request, timeout=timeout)
        job.stream = stream
        if job.stop.is_set():
            stream.close()
            raise JobError("CANCELLED", "the job was cancelled")
        try:
            stream.start()
        except BaseException:
            stream.close()
            raise
        return stream.columns, Batches(stream, 200)

    return read
