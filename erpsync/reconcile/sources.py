"""Reading the systems of record: the ERP (PostgreSQL) and the WMS (MariaDB), directly, in SQL.

Each is read in one read-only snapshot for the whole run (``erp_snapshot``, ``wms_snapshot``), so
the rows of one system are consistent with each other; ``read_inventory`` and ``read_orders`` turn
them into ``facts`` for the pure stages. The only module that queries the ERP and the WMS.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC
from decimal import Decimal
from typing import Any

import psycopg
import pymysql

from erpsync.reconcile.facts import ErpOrder, InventoryFacts, Line, PendingIntake, Shipment
from erpsync.reconcile.scope import like_regex
from erpsync.settings import Settings


def _chunks(ids: Iterable[int], size: int = 1000) -> Iterator[tuple[int, ...]]:
    ordered = sorted(set(ids))
    for i in range(0, len(ordered), size):
        yield tuple(ordered[i:i + size])


def erp_snapshot(settings: Settings) -> psycopg.Connection[Any]:
    """The ERP, read-only, one snapshot for every query of the run."""
    e = settings.erp
    conn = psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                           password=e.password.get_secret_value(), connect_timeout=10)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def wms_snapshot(settings: Settings) -> Any:
    """The WMS, read-only, one consistent snapshot for every query of the run."""
    w = settings.wms
    conn = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                           database=w.dbname, connect_timeout=10)
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
    return conn


_ERP_ITEMS = "SELECT sku, safety_stock, status FROM erp.items WHERE sku LIKE %s"
_ERP_COMMITTING_LINES = """
SELECT l.order_id, l.line_no, l.sku, l.qty
FROM erp.sales_order_lines l
JOIN erp.sales_orders o USING (order_id)
WHERE l.status = 'open'
  AND o.status IN ('entered', 'released', 'on_hold', 'allocated')
  AND l.sku LIKE %s
"""
# Lines of intakes the ERP has neither imported nor failed; the TTL is applied in Python, per channel.
_ERP_PENDING_INTAKE = """
SELECT i.channel, i.external_order_id, line->>'sku', (line->>'qty')::bigint,
       coalesce((i.payload->>'accepted_at_ms')::bigint, (extract(epoch FROM i.received_at) * 1000)::bigint)
FROM erp.order_intake i
CROSS JOIN LATERAL jsonb_array_elements(i.payload->'lines') AS line
WHERE i.status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM erp.sales_orders o
                  WHERE o.channel = i.channel AND o.external_order_id = i.external_order_id)
  AND line->>'sku' LIKE %s
"""
_WMS_BALANCES = "SELECT sku, location, on_hand, allocated, in_transit FROM inventory_balances WHERE sku LIKE %s"
_WMS_ALLOCATED = """
SELECT order_id, line_no, SUM(qty)
FROM allocations
WHERE status <> 'cancelled' AND order_id IN %s
GROUP BY order_id, line_no
"""


def read_inventory(erp: psycopg.Connection[Any], wms: Any, sku_like: str | None) -> InventoryFacts:
    like, exact = sku_like or "%", like_regex(sku_like)
    facts = InventoryFacts()
    now = erp.execute("SELECT (extract(epoch FROM now()) * 1000)::bigint").fetchone()
    facts.now_ms = int(now[0]) if now else 0
    facts.items = {sku: (int(safety), status) for sku, safety, status in erp.execute(_ERP_ITEMS, (like,))}
    facts.open_lines = [(int(o), int(n), sku, int(q)) for o, n, sku, q in erp.execute(_ERP_COMMITTING_LINES, (like,))]
    facts.pending_intake = [PendingIntake(c, x, sku, int(q), int(ms))
                            for c, x, sku, q, ms in erp.execute(_ERP_PENDING_INTAKE, (like,))]
    with wms.cursor() as cur:
        cur.execute(_WMS_BALANCES, (like,))
        for sku, location, on_hand, allocated, in_transit in cur.fetchall():
            if exact.fullmatch(sku):  # MariaDB's LIKE ignores case under the default collation
                facts.balances.setdefault(sku, {})[location] = (int(on_hand), int(allocated), int(in_transit))
        for ids in _chunks(o for o, _, _, _ in facts.open_lines):
            cur.execute(_WMS_ALLOCATED, (ids,))
            facts.wms_allocated.update({(int(o), int(n)): int(q) for o, n, q in cur.fetchall()})
    return facts


_ERP_ORDERS = """
SELECT order_id, channel, external_order_id, status, order_total
FROM erp.sales_orders
WHERE external_order_id LIKE %s
"""
_ERP_ORDER_LINES = """
SELECT l.order_id, l.line_no, l.sku, l.qty, l.unit_price, l.status
FROM erp.sales_order_lines l
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_INVOICES = """
SELECT i.order_id, i.invoice_id, i.invoice_total, i.freight_total
FROM erp.invoices i
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_CREDITS = """
SELECT c.order_id, c.credit_memo_id, c.rma_id, c.amount
FROM erp.credit_memos c
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_INTAKES = "SELECT channel, external_order_id FROM erp.order_intake WHERE external_order_id LIKE %s"
_WMS_ORDER_ALLOCATIONS = "SELECT order_id, line_no, qty, status FROM allocations WHERE order_id IN %s"
_WMS_SHIPMENTS = """
SELECT shipment_id, order_id, carrier, tracking_no, status, freight_cost
FROM shipments
WHERE order_id IN %s
"""
_WMS_SHIPMENT_LINES = """
SELECT s.order_id, l.shipment_id, l.line_no, l.qty
FROM shipment_lines l
JOIN shipments s USING (shipment_id)
WHERE s.order_id IN %s
"""
_WMS_RETURNS = "SELECT rma_id, order_id, line_no, qty, received_at FROM returns WHERE order_id IN %s"


def read_orders(erp: psycopg.Connection[Any], wms: Any, order_like: str | None) -> tuple[list[ErpOrder], set[str]]:
    """ERP orders whose external id matches, with their ERP and WMS rows; and the matching intake keys."""
    like = order_like or "%"
    orders = {int(o): ErpOrder(int(o), c, x, s, total) for o, c, x, s, total in erp.execute(_ERP_ORDERS, (like,))}
    for o, n, sku, qty, price, status in erp.execute(_ERP_ORDER_LINES, (like,)):
        orders[int(o)].lines[int(n)] = Line(sku, int(qty), price, status)
    for o, invoice_id, total, freight in erp.execute(_ERP_INVOICES, (like,)):
        orders[int(o)].invoices[int(invoice_id)] = (total, freight)
    for o, credit_id, rma, amount in erp.execute(_ERP_CREDITS, (like,)):
        orders[int(o)].credits[int(credit_id)] = (rma, amount)
    intakes = {f"{c}/{x}" for c, x in erp.execute(_ERP_INTAKES, (like,))}
    with wms.cursor() as cur:
        for ids in _chunks(orders):
            cur.execute(_WMS_ORDER_ALLOCATIONS, (ids,))
            for o, n, qty, status in cur.fetchall():
                orders[int(o)].allocations.append((int(n), int(qty), status))
            cur.execute(_WMS_SHIPMENTS, (ids,))
            for shipment_id, o, carrier, tracking, status, freight in cur.fetchall():
                orders[int(o)].shipments[int(shipment_id)] = Shipment(carrier, tracking, status, Decimal(freight))
            cur.execute(_WMS_SHIPMENT_LINES, (ids,))
            for o, shipment_id, n, qty in cur.fetchall():
                orders[int(o)].shipment_lines.append((int(shipment_id), int(n), int(qty)))
            cur.execute(_WMS_RETURNS, (ids,))
            for rma, o, n, qty, received in cur.fetchall():
                received_ms = None if received is None else int(received.replace(tzinfo=UTC).timestamp() * 1000)
                orders[int(o)].returns[rma] = (int(n), int(qty), received_ms)  # WMS times are UTC
    return list(orders.values()), intakes
