"""The relay's tables (SQLAlchemy Core) and its versioned migrations.

Timestamps are epoch seconds as floats and JSON values are text, so the same tables work
on SQLite and PostgreSQL without dialect types. ``migrate(engine)`` applies every
migration newer than the highest version recorded in ``schema_migrations``, each in its
own transaction, at startup.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float, nullable=False),
)

connectors = Table(
    "connectors",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("os", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("hostname", String(255)),
    Column("ip_address", String(64)),
    Column("version", String(50)),
    Column("last_seen", Float),
    Column("connected_since", Float),
    Column("cpu_usage", Float),
    Column("memory_usage", Float),
    Column("active_jobs", Integer, nullable=False, default=0),
    Column("capacity", Integer),
    Column("sources", Text, nullable=False, default="[]"),
    Column("api_key_prefix", String(20), nullable=False),
    Column("api_key_hash", String(64), nullable=False),
    Column("prev_key_prefix", String(20)),
    Column("prev_key_hash", String(64)),
    Column("prev_key_expires_at", Float),
    Column("public_key", String(200)),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("log_level", String(10)),  # a raised shipped log level (support), until ...
    Column("log_level_until", Float),
    Column("owner_node", String(40)),  # the relay node holding its agent (relay/agents/cluster.py) ...
    Column("owner_expires_at", Float),  # ... until this lease lapses unless renewed
    Index("ix_connectors_tenant", "tenant_id", "created_at"),
    Index("ix_connectors_key_prefix", "api_key_prefix"),
    Index("ix_connectors_prev_prefix", "prev_key_prefix"),
)

# Every earlier API key of a connector that still works, each until its own expiry (a
# second rotation no longer cuts the first one's key short). ``prev_key_*`` on connectors
# is no longer written; migration 8 moved what it held here.
connector_keys = Table(
    "connector_keys",
    metadata,
    Column("connector_id", String(40), primary_key=True),
    Column("key_hash", String(64), primary_key=True),
    Column("key_prefix", String(20), nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_connector_keys_prefix", "key_prefix"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(200), nullable=False),
    Column("connector_id", String(40), nullable=False),
    Column("source", String(200), nullable=False),
    Column("operation", String(20), nullable=False),
    Column("sealed", LargeBinary),  # the HPKE-sealed query; the clear query is never stored
    Column("seal_form", String(20), nullable=False),
    Column("options", Text, nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("job_key", String(200)),
    Column("status", String(20), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("queued_at", Float, nullable=False),
    Column("dispatched_at", Float),
    Column("started_at", Float),
    Column("completed_at", Float),
    Column("cancelled_at", Float),
    Column("row_count", Integer),
    Column("byte_count", Integer),
    Column("truncated", Integer),  # 1 when maxRows cut the result (the agent saw one more row)
    Column("chunks", Integer),
    Column("columns", Text),
    Column("error", Text),
    Column("result_expires_at", Float),
    Column("lease_expires_at", Float),  # in flight: leased to its connector until then
    Column("not_before", Float),  # queued for a retry: not dispatched before then
    Index("ix_jobs_tenant_queued", "tenant_id", "queued_at"),
    Index("ix_jobs_connector_status", "connector_id", "status"),
    Index("ux_jobs_tenant_key", "tenant_id", "job_key", unique=True),
    Index("ix_jobs_status_lease", "status", "lease_expires_at"),
)

result_chunks = Table(
    "result_chunks",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("row_start", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("data", LargeBinary, nullable=False),  # DataCipher(nonce || ciphertext)
)

agent_logs = Table(
    "agent_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connector_id", String(40), nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("level", String(10), nullable=False),
    Column("level_no", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("logger", String(200)),
    Column("job_id", String(64)),
    Column("line_id", BigInteger),  # the agent's stable id for the line (dedupe on resend)
    Column("received_at", Float),  # when the relay received it (the agent's clock is its own)
    Index("ix_agent_logs_connector", "connector_id", "id"),
    Index("ux_agent_logs_line", "connector_id", "line_id", unique=True),
)

metrics_samples = Table(
    "metrics_samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connector_id", String(40), nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("cpu_usage", Float, nullable=False),
    Column("memory_usage", Float, nullable=False),
    Column("active_jobs", Integer, nullable=False),
    Index("ix_metrics_connector_ts", "connector_id", "timestamp"),
)


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(
        conn,
        tables=[connectors, jobs, result_chunks, agent_logs, metrics_samples],
        checkfirst=True,
    )


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """Add the columns a table lacks. A store that v1 made fresh (from the tables as defined
    above) already has them; one made before they existed gets them now."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, sql_type in columns.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


def _add_index(conn: Connection, table: str, name: str, columns: str, *, unique: bool = False) -> None:
    if name not in {i["name"] for i in inspect(conn).get_indexes(table)}:
        kind = "UNIQUE INDEX" if unique else "INDEX"
        conn.execute(text(f"CREATE {kind} {name} ON {table} ({columns})"))


def _v2_leases(conn: Connection) -> None:
    _add_columns(conn, "jobs", {"lease_expires_at": "FLOAT", "not_before": "FLOAT"})
    _add_index(conn, "jobs", "ix_jobs_status_lease", "status, lease_expires_at")


def _v3_log_shipping(conn: Connection) -> None:
    # Agent line ids (catch-up without duplicates) and the support-raised log level.
    _add_columns(conn, "agent_logs", {"line_id": "BIGINT"})
    _add_index(conn, "agent_logs", "ux_agent_logs_line", "connector_id, line_id", unique=True)
    _add_columns(conn, "connectors", {"log_level": "VARCHAR(10)", "log_level_until": "FLOAT"})


def _v4_owner_leases(conn: Connection) -> None:
    # Several relay nodes: which node holds each connector's agent, and until when.
    _add_columns(conn, "connectors", {"owner_node": "VARCHAR(40)", "owner_expires_at": "FLOAT"})


def _v5_claim_index(conn: Connection) -> None:
    # Dispatch claims "the connector's queued jobs, highest priority first, then oldest":
    # without an index in that order every claim sorts all of the connector's queued jobs.
    conn.execute(text(
        "CREATE INDEX IF NOT EXISTS ix_jobs_claim "
        "ON jobs (connector_id, status, priority DESC, queued_at, id)"
    ))


def _v6_chunks_uncompressed(conn: Connection) -> None:
    # Chunks are AES-GCM ciphertext: PostgreSQL's TOAST tried to compress every ~600 KB
    # chunk with pglz and failed, for nothing. EXTERNAL: stored out of line, never
    # compressed. (SQLite does not compress.)
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE result_chunks ALTER COLUMN data SET STORAGE EXTERNAL"))


def _v7_log_received_at(conn: Connection) -> None:
    _add_columns(conn, "agent_logs", {"received_at": "FLOAT"})


def _v8_previous_keys(conn: Connection) -> None:
    # Several previous API keys per connector, each with its own expiry.
    connector_keys.create(conn, checkfirst=True)
    have = {r[0] for r in conn.execute(select(connector_keys.c.connector_id))}
    rows = conn.execute(
        select(connectors.c.id, connectors.c.prev_key_prefix, connectors.c.prev_key_hash,
               connectors.c.prev_key_expires_at)
        .where(connectors.c.prev_key_hash.is_not(None), connectors.c.prev_key_expires_at.is_not(None))
    ).all()  # fmt: skip
    for cid, prefix, key_hash, expires in rows:
        if cid not in have:
            conn.execute(insert(connector_keys).values(
                connector_id=cid, key_hash=key_hash, key_prefix=prefix, expires_at=expires))  # fmt: skip
    conn.execute(connectors.update().where(connectors.c.prev_key_hash.is_not(None))
                 .values(prev_key_prefix=None, prev_key_hash=None, prev_key_expires_at=None))  # fmt: skip


def _v9_job_truncated(conn: Connection) -> None:
    _add_columns(conn, "jobs", {"truncated": "INTEGER"})


# (version, what it does, how) — append only; never edit an applied migration.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial tables", _v1_initial),
    (2, "job leases and retry times", _v2_leases),
    (3, "agent log line ids and raised log levels", _v3_log_shipping),
    (4, "connector owner-node leases", _v4_owner_leases),
    (5, "index for dispatch claims in priority order", _v5_claim_index),
    (6, "result chunks stored without compression (PostgreSQL)", _v6_chunks_uncompressed),
    (7, "agent log lines: the relay's receive time", _v7_log_received_at),
    (8, "every previous API key of a connector, each until its own expiry", _v8_previous_keys),
    (9, "jobs: whether maxRows cut the result", _v9_job_truncated),
]


def migrate(engine: Engine) -> int:
    """Apply pending migrations; return the schema version now in place."""
    with engine.begin() as conn:
        schema_migrations.create(conn, checkfirst=True)
    with engine.begin() as conn:
        current = conn.execute(select(func.max(schema_migrations.c.version))).scalar() or 0
    for version, _what, apply in MIGRATIONS:
        if version <= current:
            continue
        with engine.begin() as conn:
            apply(conn)
            conn.execute(insert(schema_migrations).values(version=version, applied_at=time.time()))
        current = version
    return current
