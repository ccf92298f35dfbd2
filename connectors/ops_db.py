"""The operations database: migrations, and sinks that upsert under a source-position fence."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from psycopg.types.json import Jsonb

from connectors.resilience import Rejects, guarded
from erpsync import telemetry
from erpsync.ops import MIGRATIONS_DIR
from erpsync.settings import Settings
from state.availability import POSITION_SYSTEMS
from state.records import Emit, event_ms_of, newest_versions

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
-- the same fence as Redis (connectors.redis): the state version only grows
WHERE a.version < excluded.version
"""


def availability_row(value: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in value.items() if k != "positions"}
    row.update({f"pos_{system}": value["positions"].get(system, "") for system in (*POSITION_SYSTEMS, "clock")})
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
    last_seen_ms, occurrences, state, resolved_by, cleared_by, note)
VALUES (%(id)s, %(kind)s, %(severity)s, %(entity)s, %(business_key)s, %(reason)s::text, %(detail)s,
    %(source)s::jsonb, %(first_seen_ms)s, %(last_seen_ms)s, 1, %(state)s::text,
    CASE WHEN %(state)s::text = 'resolved' THEN 'erpsync' END,
    CASE WHEN %(state)s::text = 'resolved' THEN %(source)s::jsonb END,
    CASE WHEN %(state)s::text = 'resolved' THEN %(reason)s::text END)
ON CONFLICT (id) DO UPDATE SET
    -- records are applied in event time: an older one (a redelivery) changes nothing but first_seen
    occurrences = e.occurrences + (excluded.state = 'open' AND excluded.last_seen_ms > e.last_seen_ms
                                   AND e.state <> 'open')::int,
    reason = CASE WHEN excluded.last_seen_ms >= e.last_seen_ms AND excluded.state <> 'resolved'
                  THEN excluded.reason ELSE e.reason END,
    detail = CASE WHEN excluded.last_seen_ms >= e.last_seen_ms THEN excluded.detail ELSE e.detail END,
    source = CASE WHEN excluded.state = 'open' AND excluded.last_seen_ms >= e.last_seen_ms
                  THEN excluded.source ELSE e.source END,
    first_seen_ms = LEAST(e.first_seen_ms, excluded.first_seen_ms),
    last_seen_ms = GREATEST(e.last_seen_ms, excluded.last_seen_ms),
    -- replayed when the pipeline says so; resolved when the sources no longer show the problem (a
    -- resolution wins a tie); open again when it holds again later
    state = CASE WHEN excluded.state = 'replayed' THEN 'replayed'
                 WHEN excluded.last_seen_ms < e.last_seen_ms THEN e.state
                 WHEN excluded.state = 'resolved' THEN 'resolved'
                 WHEN excluded.last_seen_ms > e.last_seen_ms THEN 'open'
                 ELSE e.state END,
    resolved_by = CASE WHEN excluded.last_seen_ms < e.last_seen_ms THEN e.resolved_by
                       WHEN excluded.state = 'resolved' THEN 'erpsync'
                       WHEN excluded.last_seen_ms > e.last_seen_ms THEN NULL
                       ELSE e.resolved_by END,
    cleared_by = CASE WHEN excluded.last_seen_ms < e.last_seen_ms THEN e.cleared_by
                      WHEN excluded.state = 'resolved' THEN excluded.source
                      WHEN excluded.last_seen_ms > e.last_seen_ms THEN NULL
                      ELSE e.cleared_by END,
    note = CASE WHEN excluded.last_seen_ms >= e.last_seen_ms AND excluded.state = 'resolved' THEN excluded.reason
                WHEN excluded.last_seen_ms > e.last_seen_ms AND excluded.state = 'open' THEN NULL
                ELSE e.note END,
    state_changed_at = CASE WHEN (CASE WHEN excluded.state = 'replayed' THEN 'replayed'
                                       WHEN excluded.last_seen_ms < e.last_seen_ms THEN e.state
                                       WHEN excluded.state = 'resolved' THEN 'resolved'
                                       WHEN excluded.last_seen_ms > e.last_seen_ms THEN 'open'
                                       ELSE e.state END) <> e.state
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
    database by default). While the database is unreachable the write waits (``guarded``); a record
    it refuses (a value it cannot store) goes to the DLQ and the rest of the batch is written.
    """

    def __init__(self, settings: Settings, sql: str, to_row: Callable[[dict[str, Any]], Any], *,
                 login: Callable[[Settings], psycopg.Connection[Any]] = connect, sink: str = "ops-db",
                 newest_of: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.settings, self.sql, self.to_row, self.login, self.sink = settings, sql, to_row, login, sink
        # For upserts fenced by a version that only grows: a batch writes only each key's newest record
        # (the others would be written and overwritten in the same transaction, or fenced out).
        self.newest_of = newest_of

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UpsertPartition:
        return _UpsertPartition(self)


class _UpsertPartition(StatelessSinkPartition[Emit]):
    def __init__(self, sink: UpsertSink) -> None:
        self.sink = sink
        self.conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = self.sink.login(self.sink.settings)
        return self.conn

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def _write(self, rows: list[Any]) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.executemany(self.sink.sql, rows)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def write_batch(self, items: list[Emit]) -> None:
        name = self.sink.sink
        rows: list[Any] = []
        refused: list[tuple[Emit, BaseException]] = []
        written = items if self.sink.newest_of is None else newest_versions(items, self.sink.newest_of)
        for e in written:
            try:
                rows.append(self.sink.to_row(e.value))
            except (KeyError, TypeError, ValueError) as exc:  # a record this table cannot hold
                refused.append((e, exc))
        try:
            guarded(name, lambda: self._write(rows), drop=self._drop)
        except psycopg.Error:
            # One of them is refused (a value the column cannot take): write them one by one.
            for e, row in zip([e for e in written if not any(e is r for r, _ in refused)], rows, strict=True):
                try:
                    guarded(name, functools.partial(self._write, [row]), drop=self._drop)
                except psycopg.Error as exc:
                    refused.append((e, exc))
        Rejects.send(self.sink.settings, name, refused)
        _latency(name, items)

    def close(self) -> None:
        self._drop()


def AvailabilitySink(settings: Settings) -> UpsertSink:  # noqa: N802  (reads as the sink it makes)
    """Availability records into sync.availability, fenced by source position per system."""
    return UpsertSink(settings, _UPSERT_AVAILABILITY, availability_row, newest_of=channel_sku)


def OrderStatusSink(settings: Settings) -> UpsertSink:  # noqa: N802
    """OrderStatus records into sync.order_status, fenced by the status version."""
    return UpsertSink(settings, _UPSERT_ORDER_STATUS, order_status_row, newest_of=channel_order)


def channel_sku(value: dict[str, Any]) -> tuple[str, str]:
    return value["channel"], value["sku"]


def channel_order(value: dict[str, Any]) -> tuple[str, str]:
    return value["channel"], value["external_order_id"]


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


def write_exceptions(settings: Settings, records: list[Emit]) -> None:
    """SyncException records straight into sync.exceptions (operational ones: sink_unavailable)."""
    with connect(settings) as conn:
        conn.cursor().executemany(UPSERT_EXCEPTION, [exception_row(e.value) for e in records])
        conn.commit()


# ----------------------------------------------------------------------------- seed marker

def mark_seeded(settings: Settings, token: str, process_id: int = 0) -> None:
    """Record that the ops tables hold the outputs of pipeline process `process_id` (`token`: its recovery store)."""
    with connect(settings) as conn:
        conn.execute("INSERT INTO sync.seeded (store, token) VALUES (%s, %s) "
                     "ON CONFLICT (store) DO UPDATE SET token = excluded.token, at = now()",
                     (f"ops-db:{process_id}", token))
        conn.commit()


def seeded(settings: Settings, process_id: int = 0) -> str | None:
    """The token of the pipeline process whose outputs the ops tables hold; None if they lost them (or never had)."""
    with connect(settings) as conn:
        try:
            row = conn.execute("SELECT token FROM sync.seeded WHERE store = %s", (f"ops-db:{process_id}",)).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
    return None if row is None else str(row[0])
