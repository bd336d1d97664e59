"""A client generated from the running relay's OpenAPI document works as generated.

``openapi-python-client`` generates ``mc_relay_client`` from ``GET /api/v1/openapi.json``
of a real relay; ``mypy --strict`` checks tests/client/usage_example.py against it (and
the generated models and operations themselves; only the generator's own ``client.py``
template is excused, it has 12 strict errors of its own about httpx's ``__exit__``
types); then the example runs, unedited, against that relay and a real agent with a
SQLite source: register, rename, rotate with a grace of 0, submit, stream the rows one by
one, cancel, read the warnings, list failed jobs.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.harness import Source, Stack, stack, wait_until
from tests.system import dataset

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MYPY_INI = """[mypy]
strict = True

[mypy-mc_relay_client.client]
ignore_errors = True
"""


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("generated-client"), tenant="acme") as s:
        yield s


@pytest.fixture(scope="module")
def generated(relay: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the generated package and the usage example beside it."""
    if shutil.which("openapi-python-client", path=str(BIN)) is None:
        pytest.fail("openapi-python-client is not installed (it is in the dev extras)")
    out = tmp_path_factory.mktemp("client")
    spec = out / "openapi.json"
    assert relay.relay is not None
    spec.write_bytes(httpx.get(f"{relay.relay.url}/api/v1/openapi.json", timeout=10).content)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff hooks
    gen = subprocess.run([str(BIN / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
                          "--output-path", str(out / "mc_relay_client")],
                         cwd=out, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "Warning" not in gen.stdout + gen.stderr, gen.stdout + gen.stderr  # no piece left out
    shutil.copy(HERE / "usage_example.py", out / "usage_example.py")
    (out / "mypy.ini").write_text(MYPY_INI)
    return out


def test_the_example_type_checks_strictly(generated: Path) -> None:
    check = subprocess.run([str(BIN / "mypy"), "--config-file", "mypy.ini", "--no-incremental",
                            "usage_example.py", "mc_relay_client"],
                           cwd=generated, env={**os.environ, "MYPYPATH": str(generated)},
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Success: no issues found" in check.stdout


@pytest.fixture(scope="module")
def example(generated: Path) -> Iterator[ModuleType]:
    sys.path.insert(0, str(generated))
    try:
        yield importlib.import_module("usage_example")
    finally:
        sys.path.remove(str(generated))
        for name in [n for n in sys.modules if n == "usage_example" or n.startswith("mc_relay_client")]:
            del sys.modules[name]


def test_the_example_runs_against_a_relay_and_an_agent(relay: Stack, example: Any, tmp_path: Path) -> None:
    assert relay.relay is not None
    tenant = "acme"
    client = example.connect(relay.relay.url, relay.relay.token(tenant, "admin"))
    db = tmp_path / "erp.db"
    dataset.create_sqlite(db)

    created = example.register(client, tenant, "office")
    assert created.api_key.startswith(created.api_key_prefix) and created.id.startswith("con_")
    relay.add_agent("office", [Source("erp", "sqlite", f"sqlite:///{db}")], created=created.to_dict())
    renamed = example.rename(client, tenant, created.id, "head office")
    assert renamed.name == "head office" and renamed.status.value == "online"

    job = example.submit(client, tenant, created.id, "erp", "SELECT id, name FROM items ORDER BY id")
    assert job.status.value == "queued" and job.attempts == 0
    streamed = [(r["id"], r["name"]) for r in example.rows(client, tenant, job.id)]
    _, expected = dataset.sqlite_read(db, "SELECT id, name FROM items ORDER BY id")
    assert streamed == [tuple(r) for r in expected] and len(streamed) > 100

    slow = example.submit(client, tenant, created.id, "erp",
                          "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
                          "SELECT count(*) FROM c")  # fmt: skip
    cancelled = example.cancel(client, tenant, slow.id)
    assert cancelled.status == "cancelled" and cancelled.id == slow.id
    with pytest.raises(example.RelayError) as refused:  # an error answer, typed
        example.cancel(client, tenant, "job_nosuchjob")
    assert refused.value.code == "NOT_FOUND"

    bad = example.submit(client, tenant, created.id, "erp", "SELECT * FROM no_such_table")
    failed = wait_until(lambda: [j for j in example.failed_jobs(client, tenant, created.id) if j.id == bad.id],
                        30, what="the failed job listed")  # fmt: skip
    assert failed[0].error.code == "QUERY_FAILED" and failed[0].status.value == "failed"
    lines = wait_until(lambda: [ln for ln in example.warnings(client, tenant, created.id).logs if ln.job_id == bad.id],
                       30, what="the failed job's warning shipped")  # fmt: skip
    assert {ln.level.value for ln in lines} <= {"warning", "error", "critical"}

    before = example.connector(client, tenant, created.id)
    rotated = example.rotate_now(client, tenant, created.id)
    after = example.connector(client, tenant, created.id)
    assert rotated.api_key_prefix != before.api_key_prefix and after.api_key_prefix == rotated.api_key_prefix
    assert after.previous_keys == []  # grace 0: the old key is gone at once
    old = httpx.get(f"{relay.relay.url}/api/v1/agent/connect", headers={"Authorization": f"Bearer {created.api_key}"})
    assert old.status_code == 401
