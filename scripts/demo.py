"""`make demo`: a relay, a connector and an agent on this machine, running real jobs.

In a temporary folder: generate a small ERP database (SQLite), start ``mini-relay`` with
its embedded store, register a connector through the API, configure and start
``mini-connector`` with the source "erp", run a query (with named parameters), a schema
discovery and a connection test, print the results, the connector's status (CPU, memory)
and the agent's logs as the relay serves them, print a link that opens the web console
signed in (and, in a terminal, wait for Enter), then stop everything. Exit 0 on success;
non-zero with a one-line reason (and the processes' output) on any failure, in bounded time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import HarnessError, Source, Stack, wait_until  # noqa: E402

TOTAL_SECONDS = 180  # the whole demo, start to finish, or it fails with a message

FIRST = ["Asha", "Bram", "Chen", "Dara", "Elif", "Femi", "Goran", "Hana", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomás"]  # fmt: skip
TRADE = ["Traders", "Foods", "Textiles", "Motors", "Pharma", "Logistics", "Steel", "Agro",
         "Electricals", "Paper"]  # fmt: skip
CITIES = [("Mumbai", "IN"), ("Pune", "IN"), ("Berlin", "DE"), ("Lagos", "NG"), ("São Paulo", "BR"),
          ("Lyon", "FR"), ("Austin", "US"), ("Osaka", "JP")]  # fmt: skip


def make_erp(path: Path, customers: int = 500, invoices: int = 3000) -> None:
    """A deterministic sample ERP: customers and invoices with decimals, dates and statuses."""
    rnd = random.Random(20261124)
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE customers (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, country TEXT,
            email TEXT, created_on DATE NOT NULL);
        CREATE TABLE invoices (
            id INTEGER PRIMARY KEY, number TEXT UNIQUE NOT NULL,
            customer_id INTEGER NOT NULL REFERENCES customers(id),
            issued_on DATE NOT NULL, due_on DATE NOT NULL,
            total NUMERIC(12, 2) NOT NULL, tax NUMERIC(12, 2) NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'overdue', 'void')));
        CREATE INDEX invoices_customer ON invoices(customer_id);
        """
    )
    start = dt.date(2025, 1, 1)
    cust = []
    for i in range(1, customers + 1):
        city, country = rnd.choice(CITIES)
        name = f"{rnd.choice(FIRST)} {rnd.choice(TRADE)} {i:03d}"
        email = f"accounts{i}@example.com"
        cust.append((i, name, city, country, email, (start - dt.timedelta(days=rnd.randint(0, 900))).isoformat()))
    con.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?)", cust)
    inv = []
    for i in range(1, invoices + 1):
        issued = start + dt.timedelta(days=rnd.randint(0, 690))
        total = round(rnd.lognormvariate(7, 1.1), 2)
        status = rnd.choices(["paid", "open", "overdue", "void", "draft"], [60, 20, 12, 4, 4])[0]
        inv.append((i, f"INV-{issued.year}-{i:05d}", rnd.randint(1, customers), issued.isoformat(),
                    (issued + dt.timedelta(days=30)).isoformat(), total, round(total * 0.18, 2),
                    status))  # fmt: skip
    con.executemany("INSERT INTO invoices VALUES (?,?,?,?,?,?,?,?)", inv)
    con.commit()
    con.close()


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, limit: int = 20) -> str:
    """A plain text table of the first ``limit`` rows."""
    if not rows:
        return "  (no rows)"
    columns = columns or list(rows[0])
    shown = [[_cell(r.get(c)) for c in columns] for r in rows[:limit]]
    widths = [max(len(c), *(len(row[i]) for row in shown)) for i, c in enumerate(columns)]
    line = "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  " + "  ".join("-" * w for w in widths)
    body = ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in shown]
    more = [f"  ... {len(rows) - limit} more"] if len(rows) > limit else []
    return "\n".join([line, rule, *body, *more])


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return ", ".join(_cell(v) if not isinstance(v, dict) else str(v.get("name", v)) for v in value)
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _with_jobs(logs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return logs if logs and sum(1 for line in logs if line.get("jobId")) >= 3 else None


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


TOP_CUSTOMERS = """
SELECT c.id, c.name, c.city, c.country,
       COUNT(i.id) AS invoices,
       ROUND(SUM(i.total), 2) AS invoiced,
       MAX(i.issued_on) AS last_invoice
FROM customers c JOIN invoices i ON i.customer_id = c.id
WHERE i.status IN ('paid', 'open', 'overdue') AND i.issued_on >= :since
GROUP BY c.id, c.name, c.city, c.country
ORDER BY invoiced DESC
LIMIT :top
"""


def download_check(relay_url: str, download_url: str | None) -> str:
    """Fetch the connector's downloadUrl and check it against the relay's SHA256SUMS."""
    if download_url is None:
        return ("agent download: none yet (this relay serves no build; `make package` builds "
                "dist/downloads/, which `make demo` then serves)")  # fmt: skip
    with urllib.request.urlopen(relay_url + download_url, timeout=60) as resp:  # noqa: S310 (our own relay)
        body = resp.read()
    with urllib.request.urlopen(relay_url + "/downloads/SHA256SUMS", timeout=10) as resp:  # noqa: S310
        sums = resp.read().decode()
    name = download_url.rsplit("/", 1)[-1]
    if f"{hashlib.sha256(body).hexdigest()}  {name}" not in sums.splitlines():
        raise HarnessError(f"{download_url} does not match the relay's SHA256SUMS")
    return f"agent download: {download_url}, {len(body) / 1e6:.1f} MB, SHA-256 matches SHA256SUMS"


def run_demo(work: Path) -> None:
    step(f"Sample ERP database in {work}")
    erp = work / "erp.db"
    make_erp(erp)
    print("  customers: 500, invoices: 3000 (totals in decimals, dates, statuses)")

    # What `make package` built (installers/stage_downloads.sh), served as a relay would.
    builds = ROOT / "dist" / "downloads"
    served = {"MC_RELAY_DOWNLOADS_DIR": str(builds)} if builds.is_dir() else {}
    stack = Stack(work / "stack", tenant="demo-tenant", heartbeat=2.0, extra_env=served)
    try:
        step("Starting the relay (embedded SQLite store)")
        relay = stack.start_relay()
        assert stack.api is not None
        api = stack.api
        print(f"  mini-relay listening on {relay.url} (pid {relay.proc.pid})")

        step("Registering a connector and starting the agent with source 'erp'")
        agent = stack.add_agent("demo-erp", [Source("erp", "sqlite", f"sqlite:///{erp}")], start=False)
        print(f"  connector {agent.connector_id}, API key {agent.api_key[:12]}... (shown once)")
        print("  " + download_check(relay.url, agent.download_url))
        if (builds / "mini-connector-windows.exe").is_file():  # `make windows-check` built it
            windows = api.create_connector("demo-windows", "windows")
            print("  Windows " + download_check(relay.url, windows["downloadUrl"]))
        print("  " + agent.cli("source", "list").strip().replace("\n", "\n  "))
        stack.start_agent(agent, timeout=30)
        print("  agent online")

        step("Query job: top customers by invoiced total since 2025-06-01 (named parameters)")
        job, rows = api.run_job(agent.connector_id, "erp", sql=TOP_CUSTOMERS.strip(),
                                params={"since": "2025-06-01", "top": 10})  # fmt: skip
        print(table(rows))
        print(f"  {job['rowCount']} rows in {job['durationMs']} ms, status {job['status']}")

        step("Discover job: schema metadata")
        job, rows = api.run_job(agent.connector_id, "erp", "discover")
        print(table(rows, [c for c in ("schema", "name", "kind", "rowEstimate", "columns",
                                       "primaryKey") if c in (rows[0] if rows else {})]))  # fmt: skip

        step("Test job: connection test")
        job, rows = api.run_job(agent.connector_id, "erp", "test")
        print(table(rows))

        step("Connector status")
        con = wait_until(
            lambda: (c := api.connector(agent.connector_id)).get("cpuUsage") is not None and c,
            20, interval=0.2, what="a heartbeat with CPU and memory",
        )  # fmt: skip
        # The first CPU sample of a fresh process reads 0.0; a later heartbeat has a real one.
        with contextlib.suppress(HarnessError):
            con = wait_until(
                lambda: (c := api.connector(agent.connector_id)).get("cpuUsage") and c,
                6, interval=0.2, what="a non-zero CPU sample",
            )  # fmt: skip
        keys = ["status", "hostname", "version", "cpuUsage", "memoryUsage", "activeJobs",
                "capacity", "lastSeen", "connectedSince"]  # fmt: skip
        for key in keys:
            value = con.get(key)
            suffix = " %" if key in ("cpuUsage", "memoryUsage") and value is not None else ""
            print(f"  {key:<15}{value}{suffix}")
        print(f"  {'sources':<15}{_cell(con.get('sources'))}")

        step("Agent logs as the relay serves them (GET /connectors/{id}/logs)")
        logs = wait_until(lambda: api.logs(agent.connector_id).get("logs"), 20, interval=0.2,
                          what="the agent's logs at the relay")  # fmt: skip
        # The agent ships in batches: give the job lines a moment to arrive, then show all.
        with contextlib.suppress(HarnessError):
            logs = wait_until(lambda: _with_jobs(api.logs(agent.connector_id).get("logs")), 10,
                              interval=0.2, what="job log lines")  # fmt: skip
        for line in logs[-25:]:
            print(f"  {line['timestamp']} {line['level']:<7} {line.get('logger') or ''}: "
                  f"{line['message']}")  # fmt: skip

        step("The support console")
        # A link that opens the console signed in (docs/CONSOLE.md): the token rides in the
        # fragment, which the browser never sends to a server.
        print(f"  {relay.url}/console#token={relay.token(stack.tenant, 'admin')}")
        if sys.stdin.isatty() and sys.stdout.isatty():
            signal.alarm(0)  # the reader's time, not the demo's
            input("  open it in a browser on this machine; press Enter to stop the demo ")

        step("Stopping the agent and the relay")
    except BaseException:
        print("\n--- process output\n" + stack.logs_text(40), file=sys.stderr)
        raise
    finally:
        stack.close()
    print("  stopped")


def _on_alarm(signum: int, frame: object) -> None:
    raise HarnessError(f"the demo did not finish within {TOTAL_SECONDS}s")


def main() -> int:
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TOTAL_SECONDS)
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="mini-connector-demo-") as tmp:
            run_demo(Path(tmp))
    except HarnessError as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last guard: any failure is a message and exit 1
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    print(f"\nDemo finished in {time.monotonic() - t0:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
