"""The operations database: migrations, and sinks that upsert under a source-position fence."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from psycopg.types.json import Jsonb

from erpsync import telemetry
from erpsync.ops import MIGRATIONS_DIR
from erpsync.settings import Settings
from state.ats import POSITION_SYSTEMS
from state.records import Emit, event_ms_of

log = logging.getLogger(__name__)


def connect(settings: Settings, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    db = settings.ops
    return psycopg.connect(host=db.host, port=db.port, dbname=db.dbname, user=db.user,
                           password=db.password.get_secret_value(), autocommit=autocommit, connect_timeout=10)


def migrate(settings: Settings) -> list[str]:
    """Apply the migrations not applied yet, in file-name order, each in its own transaction."""
    applied: list[str] = []
    with connect(settings) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS sync")
        conn.execute("CREATE TABLE IF NOT EXISTS sync.schema_migrations "
                     "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.commit()
        # One migrator at a time (the flows and `stack up` may start together).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('erpsync-migrations'))")
        done = {row[0] for row in conn.execute("SELECT name FROM sync.schema_migrations")}
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name in done:
                continue
            conn.execute(path.read_text())
            conn.execute("INSERT INTO sync.schema_migrations (name) VALUES (%s)", (path.name,))
            applied.append(path.name)
        conn.commit()
    if applied:
        log.info("ops database migrations applied: %s", ", ".join(applied))
    return applied


_UPSERT_AVAILABILITY = """
INSERT INTO sync.availability AS a (channel, sku, ats, on_hand, allocated, in_transit, committed_open,
    intake_reserved, safety_stock, network, status, pos_erp, pos_wms, pos_commerce, pos_clock, version,
    event_time_ms, published_at_ms)
VALUES (%(channel)s, %(sku)s, %(ats)s, %(on_hand)s, %(allocated)s, %(in_transit)s, %(committed_open)s,
    %(intake_reserved)s, %(safety_stock)s, %(network)s, %(status)s, %(pos_erp)s, %(pos_wms)s,
    %(pos_commerce)s, %(pos_clock)s, %(version)s, %(event_time_ms)s, %(published_at_ms)s)
ON CONFLICT (channel, sku) DO UPDATE SET
    ats = excluded.ats, on_hand = excluded.on_hand, allocated = excluded.allocated,
    in_transit = excluded.in_transit, committed_open = excluded.committed_open,
    intake_reserved = excluded.intake_reserved, safety_stock = excluded.safety_stock,
    network = excluded.network, status = excluded.status, pos_erp = excluded.pos_erp,
    pos_wms = excluded.pos_wms, pos_commerce = excluded.pos_commerce, pos_clock = excluded.pos_clock,
    version = excluded.version,
    event_time_ms = excluded.event_time_ms, published_at_ms = excluded.published_at_ms, written_at = now()
-- the same fence as Redis (connectors.redis): ERP and WMS positions, then the state version
WHERE a.pos_erp <= excluded.pos_erp AND a.pos_wms <= excluded.pos_wms
  AND ((a.pos_erp, a.pos_wms) <> (excluded.pos_erp, excluded.pos_wms) OR a.version < excluded.version)
"""


def availability_row(value: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in value.items() if k != "positions"}
    row.update({f"pos_{system}": value["positions"].get(system, "") for system in POSITION_SYSTEMS})
    return row


_UPSERT_ORDER_STATUS = """
INSERT INTO sync.order_status AS o (channel, external_order_id, order_id, status, reasons, lines, carriers,
    tracking_numbers, last_fact_ms, version)
VALUES (%(channel)s, %(external_order_id)s, %(order_id)s, %(status)s, %(reasons)s, %(lines)s, %(carriers)s,
    %(tracking_numbers)s, %(last_fact_ms)s, %(version)s)
ON CONFLICT (channel, external_order_id) DO UPDATE SET
    order_id = excluded.order_id, status = excluded.status, reasons = excluded.reasons, lines = excluded.lines,
    carriers = excluded.carriers, tracking_numbers = excluded.tracking_numbers,
    last_fact_ms = excluded.last_fact_ms, version = excluded.version, written_at = now()
WHERE o.version < excluded.version
"""


UPSERT_EXCEPTION = """
INSERT INTO sync.exceptions AS e (id, kind, severity, entity, business_key, reason, detail, source, first_seen_ms,
    last_seen_ms, occurrences, state)
VALUES (%(id)s, %(kind)s, %(severity)s, %(entity)s, %(business_key)s, %(reason)s, %(detail)s, %(source)s,
    %(first_seen_ms)s, %(last_seen_ms)s, 1, %(state)s)
ON CONFLICT (id) DO UPDATE SET
    -- a new occurrence is one seen later (event time); a redelivered one changes nothing
    occurrences = e.occurrences + (excluded.state = 'open' AND excluded.last_seen_ms > e.last_seen_ms)::int,
    reason = CASE WHEN excluded.last_seen_ms >= e.last_seen_ms THEN excluded.reason ELSE e.reason END,
    detail = CASE WHEN excluded.last_seen_ms >= e.last_seen_ms THEN excluded.detail ELSE e.detail END,
    first_seen_ms = LEAST(e.first_seen_ms, excluded.first_seen_ms),
    last_seen_ms = GREATEST(e.last_seen_ms, excluded.last_seen_ms),
    -- replayed when the pipeline says so; a later record sets the state: a resolved problem that
    -- happens again is open again, one whose condition cleared (a channel back up) is resolved
    state = CASE WHEN excluded.state = 'replayed' THEN 'replayed'
                 WHEN excluded.last_seen_ms > e.last_seen_ms THEN excluded.state
                 ELSE e.state END,
    state_changed_at = CASE WHEN excluded.state = 'replayed' AND e.state <> 'replayed'
                                 OR excluded.last_seen_ms > e.last_seen_ms AND e.state <> excluded.state
                            THEN now() ELSE e.state_changed_at END,
    written_at = now()
"""


def exception_row(value: dict[str, Any]) -> dict[str, Any]:
    # An exception quotes what was wrong, which may hold NUL; PostgreSQL text and JSON cannot.
    row = _without_nul({**value, "detail": json.loads(value["detail"] or "{}")})
    return {**row, "detail": Jsonb(row["detail"]), "source": None if row["source"] is None else Jsonb(row["source"])}


def _without_nul(value: Any) -> Any:
    """The value with every NUL character in its strings shown as a backslash and a zero."""
    if isinstance(value, str):
        return value.replace("\x00", "\\0")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


class UpsertSink(DynamicSink[Emit]):
    """Writes each batch of records with one statement (`sql`, a fenced or idempotent upsert).

    The batch is committed before it is acknowledged, so before the next snapshot: a crash
    re-delivers it, and the fence makes that harmless. `login` opens the connection (the ops
    database by default).
    """

    def __init__(self, settings: Settings, sql: str, to_row: Callable[[dict[str, Any]], Any], *,
                 login: Callable[[Settings], psycopg.Connection[Any]] = connect, sink: str = "ops_db") -> None:
        self.settings, self.sql, self.to_row, self.login, self.sink = settings, sql, to_row, login, sink

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UpsertPartition:
        return _UpsertPartition(self, self.login(self.settings))


class _UpsertPartition(StatelessSinkPartition[Emit]):
    def __init__(self, sink: UpsertSink, conn: psycopg.Connection[Any]) -> None:
        self.sink, self.conn = sink, conn

    def write_batch(self, items: list[Emit]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self.sink.sql, [self.sink.to_row(e.value) for e in items])
        self.conn.commit()
        _latency(self.sink.sink, items)

    def close(self) -> None:
        self.conn.close()


def AvailabilitySink(settings: Settings) -> UpsertSink:  # noqa: N802  (reads as the sink it makes)
    """Availability records into sync.availability, fenced by source position per system."""
    return UpsertSink(settings, _UPSERT_AVAILABILITY, availability_row)


def OrderStatusSink(settings: Settings) -> UpsertSink:  # noqa: N802
    """OrderStatus records into sync.order_status, fenced by the status version."""
    return UpsertSink(settings, _UPSERT_ORDER_STATUS, order_status_row)


def ExceptionSink(settings: Settings) -> UpsertSink:  # noqa: N802
    """SyncException records into sync.exceptions: one row per problem, occurrences counted once."""
    return UpsertSink(settings, UPSERT_EXCEPTION, exception_row)


def order_status_row(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "lines": Jsonb(value["lines"])}


def _latency(sink: str, items: list[Emit]) -> None:
    by_topic: dict[str, list[int]] = {}
    for e in items:
        by_topic.setdefault(e.topic, []).append(event_ms_of(e))
    for topic, times in by_topic.items():
        telemetry.sink_latency(sink, topic, times)
