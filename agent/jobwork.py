"""The work of one job, apart from its bookkeeping: open its sealed query, then read.

``open_request`` opens the HPKE seal (a job the agent cannot open fails with
``DECRYPTION_FAILED``); ``reader`` returns the blocking function the job's worker thread
runs: the source's ``test``/``discover``, or a query stream started on the source. The
runner (``agent.runner``) owns the job's life around these.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.crypto import open_job
from shared.errors import DecryptionFailed, JobError

from .held import Job
from .sources.base import (
    DISCOVER_COLUMNS,
    TEST_COLUMNS,
    Batches,
    Column,
    Source,
    discover_rows,
    test_row,
)


def open_request(job: Job, sealed: str | None, private_key: X25519PrivateKey, connector_id: str) -> Any:
    if sealed is None:
        if job.operation == "query":
            raise JobError("QUERY_FAILED", "the job carries no query", retryable=False)
        return {}
    try:
        blob = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionFailed("the sealed query is not valid base64") from exc
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
