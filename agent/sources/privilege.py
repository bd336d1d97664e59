"""Is a SQL source's account privileged? A short finding and the SQL for a least-privilege reader.

Customers configure superuser and root accounts (the statement guard and the read-only
session still hold with them), but an account that can read the server's files, run
programs, signal other sessions or change settings turns any guard mistake into a breach.
``check`` asks the database itself, on a live connection of the source:

- PostgreSQL: ``rolsuper``; ``rolcreaterole`` (before PostgreSQL 16 such a role can grant
  itself the roles below); membership in ``pg_read_server_files``,
  ``pg_write_server_files``, ``pg_execute_server_program`` (server files and programs)
  and ``pg_signal_backend`` (cancel or end other sessions);
- MariaDB/MySQL: global (``ON *.*``) ``ALL PRIVILEGES``, ``FILE``, ``SUPER``, ``PROCESS``,
  ``SHUTDOWN`` and their relatives, from ``information_schema.USER_PRIVILEGES`` and
  ``SHOW GRANTS`` (which also shows roles);
- SQL Server: ``IS_SRVROLEMEMBER('sysadmin')`` or ``CONTROL SERVER``.

The reader SQL is printed, never run: creating accounts is the database owner's call.
``source add`` / ``source test`` / ``diagnose`` show it; see docs/SOURCES.md
("Least-privilege accounts").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import SecretBox, SourceConfig
    from .sql import SqlSource

PG_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend")
MYSQL_PRIVILEGED = frozenset({
    "ALL PRIVILEGES", "ALL", "FILE", "SUPER", "PROCESS", "SHUTDOWN", "CREATE USER", "RELOAD",
    "GRANT OPTION", "CONNECTION ADMIN", "SET USER", "SYSTEM_VARIABLES_ADMIN", "BINLOG ADMIN",
    "READ_ONLY ADMIN", "REPLICATION MASTER ADMIN", "FEDERATED ADMIN",
})  # fmt: skip
_MYSQL_FIRST = ("ALL PRIVILEGES", "FILE", "SUPER", "PROCESS", "SHUTDOWN")
READER = "mc_reader"


@dataclass(frozen=True)
class Finding:
    account: str
    privileged: bool
    reasons: list[str] = field(default_factory=list)
    reader_sql: str = ""

    @property
    def summary(self) -> str:
        if not self.privileged:
            return f"account {self.account} is not privileged"
        shown = ", ".join(self.reasons[:5]) + (f" and {len(self.reasons) - 5} more" if len(self.reasons) > 5 else "")
        return (f"account {self.account} is privileged ({shown}): with it a "
                "mistake in any guard could read or write the server's files, run programs or "
                f"stop other sessions. Use a read-only account instead, e.g. {READER}")  # fmt: skip

    def warning(self) -> str:
        """The plain multi-line warning the CLI prints."""
        return (f"WARNING: {self.summary}.\nCreate it with (choose a real password):\n"
                + "\n".join("  " + line for line in self.reader_sql.splitlines()))  # fmt: skip


def check(source: SqlSource) -> Finding | None:
    """The account's finding, or None for sources without accounts (SQLite) or an ODBC
    database of unknown kind. Connection errors propagate as ``JobError``."""
    kind = source.flavour if source.odbc else source.type
    if source.type == "mssql":
        kind = "mssql"
    probe = {"postgres": _postgres, "mysql": _mysql, "mssql": _mssql}.get(kind)
    if probe is None:
        return None
    fairy = source.raw_connection()
    try:
        cur = fairy.dbapi_connection.cursor()
        try:
            finding = probe(cur)
        finally:
            cur.close()
        fairy.dbapi_connection.rollback()
    except BaseException:
        fairy.invalidate()
        raise
    fairy.close()
    return finding


def _rows(cur: Any, sql: str) -> list[tuple[Any, ...]]:
    cur.execute(sql)
    return [tuple(r) for r in cur.fetchall()]


def _postgres(cur: Any) -> Finding:
    checks = ", ".join(f"pg_has_role(current_user, '{r}', 'MEMBER')" for r in PG_ROLES)
    [row] = _rows(cur, "SELECT current_user, current_database(), r.rolsuper, r.rolcreaterole, "
                       f"{checks} FROM pg_roles r WHERE r.rolname = current_user")  # fmt: skip
    user, db, superuser, createrole, *members = row
    reasons = ["superuser"] if superuser else []
    if createrole and not superuser:
        reasons.append("CREATEROLE")
    if not superuser:
        reasons += [r for r, m in zip(PG_ROLES, members, strict=True) if m]
    return Finding(str(user), bool(reasons), reasons, postgres_reader_sql(str(db)))


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def postgres_reader_sql(database: str, schema: str = "public") -> str:
    db, sch = _pg_ident(database), _pg_ident(schema)
    return "\n".join([
        f"CREATE ROLE {READER} LOGIN PASSWORD 'choose-a-password';",
        f"GRANT CONNECT ON DATABASE {db} TO {READER};",
        f"GRANT USAGE ON SCHEMA {sch} TO {READER};",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {sch} TO {READER};",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {sch} GRANT SELECT ON TABLES TO {READER};",
        f"ALTER ROLE {READER} SET default_transaction_read_only = on;",
    ])  # fmt: skip


_GRANT_ON_ALL = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)


def _mysql(cur: Any) -> Finding:
    [(user, db)] = _rows(cur, "SELECT CURRENT_USER(), DATABASE()")
    granted: set[str] = set()
    name, _, host = str(user).rpartition("@")
    grantee = f"'{name}'@'{host}'"
    for who, priv in _rows(cur, "SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES"):
        if str(who) == grantee:  # (an account with grant rights sees everyone's rows)
            granted.add(str(priv).upper())
    for (line,) in _rows(cur, "SHOW GRANTS"):
        m = _GRANT_ON_ALL.match(str(line))
        if m:
            granted |= {p.strip().upper() for p in m.group(1).split(",")}
        if re.search(r"WITH GRANT OPTION\s*$", str(line), re.IGNORECASE) and " ON *.* " in str(line):
            granted.add("GRANT OPTION")
    first = [p for p in _MYSQL_FIRST if p in granted]
    reasons = first + sorted((granted & MYSQL_PRIVILEGED) - set(first) - {"ALL"})
    return Finding(str(user), bool(reasons), reasons, mysql_reader_sql(str(db) if db else "your_database"))


def mysql_reader_sql(database: str, host: str = "%") -> str:
    db = "`" + database.replace("`", "``") + "`"
    return "\n".join([
        f"CREATE USER '{READER}'@'{host}' IDENTIFIED BY 'choose-a-password';",
        f"GRANT SELECT, SHOW VIEW ON {db}.* TO '{READER}'@'{host}';",
        "-- (replace '%' with the agent's address to allow it from there only)",
    ])  # fmt: skip


def _mssql(cur: Any) -> Finding:
    [(user, db, sysadmin, control)] = _rows(
        cur, "SELECT SUSER_SNAME(), DB_NAME(), IS_SRVROLEMEMBER('sysadmin'), "
             "HAS_PERMS_BY_NAME(NULL, NULL, 'CONTROL SERVER')",
    )  # fmt: skip
    reasons = (["sysadmin"] if sysadmin == 1 else []) + (["CONTROL SERVER"] if control == 1 and sysadmin != 1 else [])
    return Finding(str(user), bool(reasons), reasons, mssql_reader_sql(str(db)))


def mssql_reader_sql(database: str) -> str:
    db = "[" + database.replace("]", "]]") + "]"
    return "\n".join([
        f"CREATE LOGIN {READER} WITH PASSWORD = 'Choose-a-password-1';",
        f"USE {db};",
        f"CREATE USER {READER} FOR LOGIN {READER};",
        f"ALTER ROLE db_datareader ADD MEMBER {READER};",
    ])  # fmt: skip


def account_finding(source_cfg: SourceConfig, box: SecretBox) -> tuple[Finding | None, str]:
    """For the CLI: (finding, "") or (None, why it could not be checked). A short connect
    timeout, one connection, closed afterwards; never raises."""
    from shared.errors import JobError

    from .configured import SourceSet

    options = dict(source_cfg.options)
    given = str(options.get("connect_timeout") or "5")
    options["connect_timeout"] = str(min(5, int(given))) if given.isdigit() and int(given) > 0 else "5"
    cfg = type(source_cfg)(name=source_cfg.name, type=source_cfg.type, url=source_cfg.url,
                           password_enc=source_cfg.password_enc, options=options)  # fmt: skip
    sources = SourceSet({cfg.name: cfg}, box, pool_size=1)
    try:
        return check(sources.get(cfg.name)), ""  # type: ignore[arg-type]
    except JobError as exc:
        return None, f"{exc.code}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - a warning path: say why, never fail the command
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        sources.close()
