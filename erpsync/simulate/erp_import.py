"""The ERP's order import: the ``erp.order_intake`` rows the pipeline wrote become ERP sales orders.

``parse_intake_payload`` reads the accepted order in a row (pure, lenient as an importer is);
``ErpImporter`` imports this run's pending rows, one transaction each: the intake becomes 'imported'
with the ERP order id, or 'failed' with an error where the plan injects an import failure or the
payload is not an order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from erpsync.simulate.faults import IMPORT_FAILED
from erpsync.simulate.money import money
from erpsync.simulate.systems import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IntakeOrder:
    """What the ERP import needs from an ``erp.order_intake`` payload."""

    customer_id: str
    currency: str
    fulfillment_method: str
    tax_jurisdiction: str | None
    freight_total: Decimal
    discount_total: Decimal
    tax_total: Decimal
    lines: tuple[tuple[int, str, int, Decimal], ...]  # line_no, sku, qty, unit_price

    @property
    def merchandise_total(self) -> Decimal:
        return money(sum((qty * price for _, _, qty, price in self.lines), Decimal(0)))

    @property
    def order_total(self) -> Decimal:
        return self.merchandise_total - self.discount_total + self.freight_total + self.tax_total


def parse_intake_payload(payload: Any) -> IntakeOrder:
    """The accepted order in an intake payload; ValueError when it is not an order.

    Lenient: a JSON object or string, amounts as strings or numbers, absent totals as zero, any
    ``placed_at`` (the import does not need it).
    """
    doc = json.loads(payload) if isinstance(payload, str | bytes) else payload
    if not isinstance(doc, dict):
        raise ValueError("payload is not a JSON object")
    try:
        lines = tuple((int(ln["line_no"]), str(ln["sku"]), int(ln["qty"]), Decimal(str(ln["unit_price"])))
                      for ln in doc["lines"])
        order = IntakeOrder(
            customer_id=str(doc["customer_id"]), currency=str(doc.get("currency") or "USD"),
            fulfillment_method=str(doc.get("fulfillment_method") or "SHIP"),
            tax_jurisdiction=doc.get("tax_jurisdiction") or None,
            freight_total=money(Decimal(str(doc.get("freight_total") or 0))),
            discount_total=money(Decimal(str(doc.get("discount_total") or 0))),
            tax_total=money(Decimal(str(doc.get("tax_total") or 0))), lines=lines)
    except (KeyError, TypeError, ArithmeticError) as exc:  # decimal.InvalidOperation is an ArithmeticError
        raise ValueError(f"payload is not an order: {exc!r}") from exc
    if not lines or any(qty <= 0 for _, _, qty, _ in lines):
        raise ValueError("payload has no lines, or a line without a positive quantity")
    return order


class ErpImporter(Role):
    """Imports a run's pending intakes into the ERP, as its order import would."""

    def import_pending(self) -> int:
        """Import this run's pending ``erp.order_intake`` rows as sales orders (status 'entered').

        Lines are 'open'; the intake row becomes 'imported' with the ERP order id in the same
        transaction, or 'failed' with an error where the plan says so or the payload is not an order.
        """
        erp = self.systems.erp()
        pending = erp.execute(
            "SELECT channel, external_order_id FROM erp.order_intake"
            " WHERE status = 'pending' AND external_order_id LIKE %s ORDER BY received_at, external_order_id",
            (self.systems.like(),)).fetchall()
        for channel, external_id in pending:
            self._import_one(channel, external_id)
        return len(pending)

    def _import_one(self, channel: str, external_id: str) -> None:
        import psycopg  # noqa: PLC0415

        key = f"{channel}:{external_id}"
        plan = self.scenario.plans.get(key)
        erp = self.systems.erp()
        error = "simulated ERP import failure"
        try:
            with erp.transaction():
                row = erp.execute(
                    "SELECT payload FROM erp.order_intake WHERE channel = %s AND external_order_id = %s"
                    " AND status = 'pending' FOR UPDATE", (channel, external_id)).fetchone()
                if row is None:
                    return  # imported meanwhile by someone else
                order_id = None
                if plan is None or plan.downstream != IMPORT_FAILED:
                    order_id = self._insert_order(channel, external_id, parse_intake_payload(row[0]))
                    erp.execute("UPDATE erp.order_intake SET status = 'imported', erp_order_id = %s, error = NULL"
                                " WHERE channel = %s AND external_order_id = %s", (order_id, channel, external_id))
        except (ValueError, psycopg.IntegrityError, psycopg.DataError) as exc:
            order_id, error = None, f"import failed: {exc}"
        if order_id is not None:
            return
        with erp.transaction():
            erp.execute("UPDATE erp.order_intake SET status = 'failed', error = %s"
                        " WHERE channel = %s AND external_order_id = %s AND status = 'pending'",
                        (error, channel, external_id))
        if plan is not None and plan.downstream == IMPORT_FAILED:
            self.manifest.downstream[key] = IMPORT_FAILED
        log.info("intake %s marked failed: %s", key, error)

    def _insert_order(self, channel: str, external_id: str, order: IntakeOrder) -> int:
        erp = self.systems.erp()
        jurisdiction = order.tax_jurisdiction
        if jurisdiction is None:
            row = erp.execute("SELECT tax_jurisdiction FROM erp.customers WHERE customer_id = %s",
                              (order.customer_id,)).fetchone()
            jurisdiction = row[0] if row else None
        if jurisdiction is None:
            raise ValueError("no tax jurisdiction on the order or its customer")
        inserted = erp.execute(
            "INSERT INTO erp.sales_orders (order_id, channel, external_order_id, customer_id, status, currency,"
            " fulfillment_method, tax_jurisdiction, merchandise_total, discount_total, freight_total, tax_total,"
            " order_total) VALUES (%s, %s, %s, %s, 'entered', %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (channel, external_order_id) DO NOTHING RETURNING order_id",
            (self.systems.next_id(), channel, external_id, order.customer_id, order.currency, order.fulfillment_method,
             jurisdiction, order.merchandise_total, order.discount_total, order.freight_total, order.tax_total,
             order.order_total)).fetchone()
        if inserted is None:  # already imported under this key: link the intake to it
            existing = erp.execute("SELECT order_id FROM erp.sales_orders WHERE channel = %s"
                                   " AND external_order_id = %s", (channel, external_id)).fetchone()
            return int(existing[0])
        order_id = int(inserted[0])
        with erp.cursor() as cur:
            cur.executemany(
                "INSERT INTO erp.sales_order_lines (order_id, line_no, sku, qty, unit_price, status)"
                " VALUES (%s, %s, %s, %s, %s, 'open')", [(order_id, *line) for line in order.lines])
        return order_id
