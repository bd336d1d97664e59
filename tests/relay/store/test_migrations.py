"""Migrations bring an older store up to date and are safe to run again."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, select, text

from relay.store.schema import MIGRATIONS, migrate, schema_migrations


def test_an_older_store_gains_the_later_columns_and_indexes(tmp_path) -> None:
    """A store left at version 1 without the later columns gets them from 2..N."""
    engine = create_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ux_agent_logs_line"))
        conn.execute(text("DROP INDEX ix_jobs_status_lease"))
        for table, column in (("agent_logs", "line_id"), ("connectors", "owner_node"),
                              ("jobs", "not_before")):  # fmt: skip
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version > 1))
    assert migrate(engine) == MIGRATIONS[-1][0]
    insp = inspect(engine)
    assert "line_id" in {c["name"] for c in insp.get_columns("agent_logs")}
    assert "owner_node" in {c["name"] for c in insp.get_columns("connectors")}
    assert "not_before" in {c["name"] for c in insp.get_columns("jobs")}
    assert {"ix_jobs_status_lease", "ix_jobs_claim"} <= {i["name"] for i in insp.get_indexes("jobs")}
    assert "ux_agent_logs_line" in {i["name"] for i in insp.get_indexes("agent_logs")}
    assert migrate(engine) == MIGRATIONS[-1][0]  # nothing left to do, nothing breaks
    with engine.connect() as conn:
        versions = [r[0] for r in conn.execute(select(schema_migrations.c.version))]
    assert versions == [v for v, _, _ in MIGRATIONS]


def test_postgres_store_keeps_chunks_uncompressed(pg_database: str) -> None:
    """Migration 6: encrypted chunks are incompressible, so TOAST must not try (storage
    EXTERNAL, 'e'); every migration applies on PostgreSQL and runs again harmlessly."""
    engine = create_engine(pg_database)
    try:
        assert migrate(engine) == MIGRATIONS[-1][0]
        assert migrate(engine) == MIGRATIONS[-1][0]
        with engine.connect() as conn:
            storage = conn.execute(text(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'result_chunks'::regclass"
                " AND attname = 'data'"
            )).scalar()  # fmt: skip
        assert storage == "e"
    finally:
        engine.dispose()


def test_v8_moves_the_previous_key_to_its_own_table(tmp_path) -> None:
    """A store from before migration 8 (one previous key in connectors.prev_key_*) keeps
    that key working until its expiry: it moves to connector_keys, the old columns clear."""
    from relay.store import connectors as con_store
    from relay.store.schema import connector_keys, connectors
    from shared import keys as api_keys

    engine = create_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    migrate(engine)
    old, new = api_keys.generate_key(), api_keys.generate_key()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE connector_keys"))
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version >= 8))
        conn.execute(connectors.insert().values(
            id="con_1", tenant_id="t", name="n", os="linux", status="pending", sources="[]",
            active_jobs=0, api_key_prefix=api_keys.key_prefix(new), api_key_hash=api_keys.hash_key(new),
            prev_key_prefix=api_keys.key_prefix(old), prev_key_hash=api_keys.hash_key(old),
            prev_key_expires_at=5000.0, created_at=1.0))  # fmt: skip
    assert migrate(engine) == MIGRATIONS[-1][0]
    with engine.begin() as conn:
        moved = conn.execute(select(connector_keys)).all()
        assert [(r.connector_id, r.key_prefix, r.expires_at) for r in moved] == [
            ("con_1", api_keys.key_prefix(old), 5000.0)]
        assert conn.execute(select(connectors.c.prev_key_hash)).scalar() is None
        found = con_store.by_key_prefix(conn, api_keys.key_prefix(old))
        assert [(r["id"], r["prev_key_expires_at"]) for r in found] == [("con_1", 5000.0)]
        assert con_store.previous_keys(conn, ["con_1"], 4999.0)["con_1"][0]["expires_at"] == 5000.0
        assert con_store.previous_keys(conn, ["con_1"], 5000.0) == {}
    assert migrate(engine) == MIGRATIONS[-1][0]
