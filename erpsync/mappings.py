"""What ``erpsync mappings check`` needs beyond the contract: the connectors and the live source databases."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import psycopg
import pymysql

from erpsync.settings import DatabaseSettings, Settings
from erpsync.stack.components import load_connector_configs
from erpsync.stack.process import StackError
from schemas.mapping_check import Catalog, Table, information_schema_table

log = logging.getLogger(__name__)

_PG_COLUMNS = """
SELECT table_schema || '.' || table_name, column_name, data_type, numeric_scale, datetime_precision,
       CASE WHEN data_type = 'numeric' THEN format('numeric(%s,%s)', numeric_precision, numeric_scale)
            ELSE data_type END
FROM information_schema.columns
WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY table_schema, table_name, ordinal_position
"""
# pg_catalog, not information_schema.table_constraints: that view hides constraints from a login
# that only has SELECT, as the capture login does.
_PG_PRIMARY_KEYS = """
SELECT n.nspname || '.' || c.relname, a.attname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
WHERE i.indisprimary
ORDER BY 1, array_position(i.indkey::int2[], a.attnum)
"""
_MYSQL_COLUMNS = """
SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), COLUMN_NAME, DATA_TYPE, NUMERIC_SCALE, DATETIME_PRECISION, COLUMN_TYPE
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION
"""
_MYSQL_PRIMARY_KEYS = """
SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE
WHERE CONSTRAINT_NAME = 'PRIMARY'
ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION
"""


def connector_systems() -> dict[str, str] | None:
    """topic.prefix -> connector class of every connector definition (debezium/*.json); None if there are none."""
    try:
        connectors = load_connector_configs()
    except StackError:
        return None
    return {c["config"]["topic.prefix"]: c["config"]["connector.class"] for c in connectors
            if "topic.prefix" in c.get("config", {})}


def live_catalog(settings: Settings, systems: Iterable[str]) -> Catalog:
    """The tables of each system's database as its capture login sees them (what Debezium can capture)."""
    classes = connector_systems() or {}
    tables: dict[str, Table] = {}
    missing: dict[str, str] = {}
    wanted = sorted(set(systems))
    for system in wanted:
        db = getattr(settings, system, None)
        connector = classes.get(system, "")
        if not isinstance(db, DatabaseSettings) or not connector:
            missing[system] = (f"no database settings (ERPSYNC_{system.upper()}__...) and connector for "
                               f"system {system!r}")
            continue
        where = f"{db.host}:{db.port} as {db.capture_user}"
        try:
            if "postgres" in connector.lower():
                found = _read_postgres(db)
            else:
                found = _read_mysql(db)
        except (psycopg.Error, pymysql.MySQLError, OSError) as exc:
            missing[system] = f"cannot read the information_schema of {system} at {where}: {exc}".strip()
            continue
        log.info("read %d tables of %s at %s", len(found), system, where)
        tables.update(found)
    source = "the live databases' information_schema (" + ", ".join(wanted) + ", as their capture logins)"
    return Catalog(tables, source, frozenset(s for s in wanted if s not in missing), missing)


def _read_postgres(db: DatabaseSettings) -> dict[str, Table]:
    conninfo = psycopg.conninfo.make_conninfo(host=db.host, port=db.port, dbname=db.dbname, user=db.capture_user,
                                              password=db.capture_password.get_secret_value(), connect_timeout=5)
    with psycopg.connect(conninfo) as conn:
        columns = conn.execute(_PG_COLUMNS).fetchall()
        keys = conn.execute(_PG_PRIMARY_KEYS).fetchall()
    return _tables(columns, keys)


def _read_mysql(db: DatabaseSettings) -> dict[str, Table]:
    conn = pymysql.connect(host=db.host, port=db.port, user=db.capture_user,
                           password=db.capture_password.get_secret_value(), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(_MYSQL_COLUMNS)
            # MySQL/MariaDB TIMESTAMP arrives from Debezium as a zoned ISO string, DATETIME as epoch.
            columns = [(t, c, "timestamptz" if dt == "timestamp" else dt, s, p, full)
                       for t, c, dt, s, p, full in cur.fetchall()]
            cur.execute(_MYSQL_PRIMARY_KEYS)
            keys = list(cur.fetchall())
    finally:
        conn.close()
    return _tables(columns, keys)


def _tables(columns: Iterable[tuple[str, str, str, int | None, int | None, str]],
            keys: Iterable[tuple[str, str]]) -> dict[str, Table]:
    by_table: dict[str, list[tuple[str, str, int | None, int | None, str]]] = {}
    for table, column, data_type, scale, precision, full in columns:
        by_table.setdefault(table, []).append((column, data_type, scale, precision, full))
    primary: dict[str, list[str]] = {}
    for table, column in keys:
        primary.setdefault(table, []).append(column)
    return {t: information_schema_table(t, rows, primary.get(t, ())) for t, rows in by_table.items()}
