"""The relay's API through a client generated from its own OpenAPI document, unedited.

Generate it (docs/API.md, "A generated client"), then use it as below::

    openapi-python-client generate --url https://relay.example.com/api/v1/openapi.json \\
        --meta none --output-path mc_relay_client

Every call returns the success envelope's model or ``ErrorResponse``; ``ok`` turns the second into
an exception. Results are streamed line by line with the generated client's own httpx
client (a generator would read the whole body into memory), each line a ``ResultRow``.
``mypy --strict`` passes on this file with the generated package beside it, and
tests/client/test_generated_client.py runs it against a real relay and agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TypeVar

from mc_relay_client import AuthenticatedClient
from mc_relay_client.api.relay import (
    cancel_job,
    create_connector,
    create_job,
    get_connector,
    get_connector_logs,
    list_jobs,
    rotate_connector_key,
    update_connector,
)
from mc_relay_client.models import (
    Connector,
    ConnectorCreated,
    ConnectorPatch,
    ErrorResponse,
    GetConnectorLogsLevel,
    Job,
    JobCancelled,
    ListJobsStatus,
    LogPage,
    NewConnector,
    NewConnectorOs,
    NewJob,
    NewJobQueryType0,
    ResultRow,
    RotatedKey,
    RotateKeyRequest,
)

T = TypeVar("T")


class RelayError(Exception):
    """An error answer (docs/API.md, Error codes): its code, message and request id."""

    def __init__(self, error: ErrorResponse) -> None:
        self.code = error.error.code
        self.request_id = error.error.request_id
        super().__init__(f"{error.error.code}: {error.error.message} ({error.error.request_id})")


def ok(answer: T | ErrorResponse | None) -> T:
    """The success model of a generated call, or the relay's error raised."""
    if isinstance(answer, ErrorResponse):
        raise RelayError(answer)
    if answer is None:  # a status the document does not list
        raise RuntimeError("the relay answered a status its OpenAPI document does not list")
    return answer


def connect(base_url: str, token: str) -> AuthenticatedClient:
    return AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)


def register(client: AuthenticatedClient, tenant: str, name: str) -> ConnectorCreated:
    """A new connector; its API key (``api_key``) is shown this once."""
    body = NewConnector(name=name, os=NewConnectorOs.LINUX)
    return ok(create_connector.sync(client=client, body=body, x_tenant_id=tenant)).data


def connector(client: AuthenticatedClient, tenant: str, connector_id: str) -> Connector:
    return ok(get_connector.sync(connector_id, client=client, x_tenant_id=tenant)).data


def rename(client: AuthenticatedClient, tenant: str, connector_id: str, name: str) -> Connector:
    patch = ConnectorPatch(name=name)
    return ok(update_connector.sync(connector_id, client=client, body=patch, x_tenant_id=tenant)).data


def rotate_now(client: AuthenticatedClient, tenant: str, connector_id: str) -> RotatedKey:
    """A new key, every earlier one cut off at once (a stolen key)."""
    body = RotateKeyRequest(grace_period_seconds=0)
    return ok(rotate_connector_key.sync(connector_id, client=client, body=body, x_tenant_id=tenant)).data


def submit(client: AuthenticatedClient, tenant: str, connector_id: str, source: str, sql: str) -> Job:
    body = NewJob(connector_id=connector_id, source=source, query=NewJobQueryType0.from_dict({"sql": sql}))
    return ok(create_job.sync(client=client, body=body, x_tenant_id=tenant)).data


def rows(client: AuthenticatedClient, tenant: str, job_id: str) -> Iterator[ResultRow]:
    """The job's rows one at a time, as the relay streams them (while the job runs too)."""
    http = client.get_httpx_client()
    with http.stream("GET", f"/api/v1/jobs/{job_id}/results", headers={"X-Tenant-ID": tenant}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RelayError(ErrorResponse.from_dict(resp.json()))
        for line in resp.iter_lines():
            if line:
                yield ResultRow.from_dict(json.loads(line))


def cancel(client: AuthenticatedClient, tenant: str, job_id: str) -> JobCancelled:
    return ok(cancel_job.sync(job_id, client=client, x_tenant_id=tenant)).data


def warnings(client: AuthenticatedClient, tenant: str, connector_id: str) -> LogPage:
    """The agent's shipped log lines at warning and above, oldest first."""
    return ok(get_connector_logs.sync(connector_id, client=client, level=GetConnectorLogsLevel.WARNING,
                                      x_tenant_id=tenant)).data  # fmt: skip


def failed_jobs(client: AuthenticatedClient, tenant: str, connector_id: str) -> list[Job]:
    page = ok(list_jobs.sync(client=client, connector_id=connector_id, status=ListJobsStatus.FAILED,
                             x_tenant_id=tenant))  # fmt: skip
    return page.data
