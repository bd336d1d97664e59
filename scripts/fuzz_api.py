"""``make fuzz-api``: schemathesis, every check and every phase (stateful included), over
the relay's served OpenAPI document, against a real relay with a connector and an agent.

Starts a relay (embedded SQLite store), registers a connector, runs an agent for it with
a small SQLite source, then runs ``st run`` with ``tests/security/schemathesis.toml``
(which says what is deliberately different, each reason in docs/API.md, "The API under a
fuzzer"). Exits with schemathesis's code: 0 only when it found nothing.

    MC_FUZZ_SECONDS   time budget of the run (default 150; CI uses the default)
    MC_FUZZ_SEED      schemathesis's seed (default: fixed, so a CI failure replays)
    MC_FUZZ_REPORT    a folder for an NDJSON report of every request (default: none)

The two WebSocket routes (/api/v1/events, /api/v1/agent/connect) are not in the OpenAPI
document (the AsyncAPI document at /api/v1/asyncapi.json describes them);
tests/security/test_agent_fuzz.py and tests/relay/api/test_asyncapi.py cover them.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import Source, Stack  # noqa: E402

CONFIG = ROOT / "tests" / "security" / "schemathesis.toml"
# A fuzzer sends thousands of admin requests a minute, and its guesses without a token
# fail authentication: both limits are raised for this relay only, so each route answers
# for itself rather than 429 (429 is documented on every route and fuzzed in
# tests/security/test_api_schemathesis.py with the default limits' headers).
LOUD = "100000000"
FUZZ_ENV = {
    "MC_RELAY_RATE_LIMIT_ADMIN": LOUD,
    "MC_RELAY_TENANT_RATE_LIMIT_ADMIN": LOUD,
    "MC_RELAY_AUTH_FAILURES": LOUD,
    "MC_RELAY_RATE_LIMIT": LOUD,
}


def _source(folder: Path) -> Source:
    db = folder / "orders.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"c{i}", i * 1.5) for i in range(50)])
    return Source("orders", "sqlite", f"sqlite:///{db}")


def main() -> int:
    seconds = os.environ.get("MC_FUZZ_SECONDS", "150")
    seed = os.environ.get("MC_FUZZ_SEED", "20261204")
    st = Path(sys.executable).with_name("st")
    with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as tmp:
        stack = Stack(Path(tmp), tenant="fuzz", extra_env=FUZZ_ENV)
        try:
            relay = stack.start_relay()
            assert stack.api is not None
            agent = stack.add_agent("fuzz-agent", [_source(Path(tmp))])
            job, rows = stack.api.run_job(agent.connector_id, "orders", sql="SELECT * FROM orders")
            print(f"relay {relay.url}, connector {agent.connector_id} online, "
                  f"job {job['id']} {job['status']} with {len(rows)} rows", flush=True)  # fmt: skip
            argv = [str(st), "--config-file", str(CONFIG), "run", f"{relay.url}/api/v1/openapi.json",
                    "--checks", "all", "--exclude-checks", "use_after_free", "--phases", "examples,coverage,fuzzing,stateful",
                    "--max-time", seconds, "--seed", seed, "--workers", "2",
                    "-H", f"Authorization: Bearer {stack.api.token}", "-H", f"X-Tenant-ID: {stack.tenant}"]  # fmt: skip
            if os.environ.get("MC_FUZZ_REPORT"):
                argv += ["--report", "ndjson", "--report-dir", os.environ["MC_FUZZ_REPORT"]]
            code = subprocess.call(argv, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})  # noqa: S603 (our own argv)
            if not relay.proc.alive():
                print("the relay died during the run:\n" + relay.proc.tail(), file=sys.stderr)
                return 1
            return code
        finally:
            stack.close()


if __name__ == "__main__":
    sys.exit(main())
