"""One reconciliation run: read every system, recompute, compare, count the KPIs, store the run.

The orchestration only (``reconcile``): each stage lives in its own module. ``store_report`` saves
the run and its findings in ``sync.reconciliation_runs`` / ``sync.reconciliation_findings``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from connectors import ops_db
from erpsync.channels import configured_channels
from erpsync.reconcile.compare import compare_inventory, compare_orders, compare_push, compare_topics
from erpsync.reconcile.kpis import Kpis, order_exception_rate, percent
from erpsync.reconcile.published import read_ops, read_push_acks, read_redis, read_topic_tails
from erpsync.reconcile.recompute import recompute_ats
from erpsync.reconcile.report import Report
from erpsync.reconcile.sources import erp_snapshot, read_inventory, read_orders, wms_snapshot
from erpsync.settings import Settings
from state.channels import Channel

log = logging.getLogger(__name__)

STEPS = ("reading the ERP and the WMS", "reading the ops database and Redis", "recomputing and comparing",
         "reading the channel topics", "storing the run")


def reconcile(settings: Settings, *, sku_like: str | None = None, order_like: str | None = None,
              since_ms: int | None = None, min_accuracy_pct: float | None = None, topic_records: int | None = None,
              store: bool = True, channels: Sequence[Channel] | None = None,
              on_step: Callable[[str], None] | None = None) -> Report:
    """Reconcile the SKUs and orders in scope (SQL LIKE patterns; None: all) and, if `store`, save the run.

    since_ms limits the sync-latency sample to rows written since then. topic_records (None: the
    topics are not read) is how many of the newest records of each compacted topic to compare.
    on_step (progress) is called with each of STEPS as it begins.
    """
    step = on_step or (lambda name: None)
    started = datetime.now(UTC)
    channels = tuple(channels or configured_channels(settings))
    step("reading the ERP and the WMS")
    with closing(erp_snapshot(settings)) as erp, closing(wms_snapshot(settings)) as wms:
        facts = read_inventory(erp, wms, sku_like)
        orders, intakes = read_orders(erp, wms, order_like)
    step("reading the ops database and Redis")
    published = read_ops(settings, sku_like, order_like, since_ms)
    told = read_redis(settings, [c for c in channels if c.outputs.redis], sku_like)
    ids = {c.id for c in channels}

    skus = facts.skus() | {sku for ch, sku in published.availability if ch in ids} | {
        sku for values in told.values() for sku in values}
    step("recomputing and comparing")
    ats = recompute_ats(facts, channels, skus)
    inventory = compare_inventory(ats, told, published.availability, facts.known(),
                                  {c.id for c in channels if c.outputs.redis})
    result = compare_orders(orders, intakes, published.order_status, ids, facts.now_ms,
                            int(settings.flows.credit_sla_s * 1000))
    findings = inventory.findings + result.findings
    pushed = {c.id for c in channels if c.outputs.push is not None and "availability" in c.outputs.push.sends}
    findings += compare_push(ats, read_push_acks(settings, sorted(pushed), sku_like), pushed)
    notes: list[str] = []
    if topic_records is not None:
        step("reading the channel topics")
        order_keys = {k.partition("/")[2] for k in result.expected}
        wanted = {c.topic for c in channels if c.outputs.kafka} | {
            c.order_status_topic for c in channels if c.outputs.kafka}
        latest, notes = read_topic_tails(
            settings, sorted(wanted), topic_records,
            lambda topic, key: key in order_keys if topic.startswith("order-status.") else key in skus)
        findings += compare_topics(latest, ats, result.expected, channels)
        seen = Counter(topic.split(".", 1)[0] for topic, _ in latest)
        notes.append(f"topics: compared {seen['availability']} availability and {seen['order-status']} "
                     f"order-status keys found in the newest {topic_records} records of each topic")
    if published.open_exceptions is None:
        notes.append("the ops database has no sync.exceptions table: open exceptions and pipeline exceptions "
                     "are not counted")
    with_exceptions, orders_in_scope = order_exception_rate(result.keys, findings, result.rejected,
                                                            published.exception_orders)
    kpis = Kpis(
        inventory_pairs=inventory.pairs, inventory_accurate=inventory.accurate,
        inventory_accuracy_pct=percent(inventory.accurate, inventory.pairs),
        orders=orders_in_scope, orders_with_exceptions=with_exceptions,
        order_exception_rate_pct=percent(with_exceptions, orders_in_scope),
        invoices=result.invoices, invoices_with_discrepancy=result.invoices_with_discrepancy,
        invoice_discrepancy_rate_pct=percent(result.invoices_with_discrepancy, result.invoices),
        sync_latency_ms=published.latency, open_exceptions_by_kind=published.open_exceptions)
    scope = {"skus": sku_like, "orders": order_like, "since_ms": since_ms, "topic_records": topic_records,
             "channels": sorted(ids)}
    report = Report(scope, started, datetime.now(UTC), kpis, findings, notes, min_accuracy_pct)
    log.info("reconciled %d SKU x channel pairs and %d orders: %d findings", inventory.pairs, orders_in_scope,
             len(findings))
    if store:
        step("storing the run")
        report.run_id = store_report(settings, report)
    return report


_INSERT_RUN = """
INSERT INTO sync.reconciliation_runs (started_at, finished_at, scope, kpis, accuracy, min_accuracy, passed)
VALUES (%s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""
_COPY_FINDINGS = """
COPY sync.reconciliation_findings (run_id, seq, kind, entity, business_key, expected, actual, detail) FROM STDIN
"""


def store_report(settings: Settings, report: Report) -> int:
    """Save the run and its findings in one transaction (migrating the ops database first); the run id."""
    ops_db.migrate(settings)

    def as_json(value: Any) -> str | None:
        return None if value is None else json.dumps(value, default=str)

    with ops_db.connect(settings) as conn:
        row = conn.execute(_INSERT_RUN, (
            report.started_at, report.finished_at, as_json(report.scope), as_json(asdict(report.kpis)),
            report.kpis.inventory_accuracy_pct, report.min_accuracy_pct, report.passed)).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        run_id = int(row[0])
        with conn.cursor() as cur, cur.copy(_COPY_FINDINGS) as copy:
            for seq, f in enumerate(report.findings, 1):
                copy.write_row((run_id, seq, f.kind, f.entity, f.business_key, as_json(f.expected),
                                as_json(f.actual), as_json(f.detail) or "{}"))
        conn.commit()
    return run_id
