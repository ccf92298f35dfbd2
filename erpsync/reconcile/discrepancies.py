"""The systems of record against each other: what an order's ERP and WMS rows show by themselves.

Invoices against the order total, invoiced freight against the shipments' freight cost, credit memos
against returned quantities, shipments against ordered quantities and the ERP's status: findings
that hold whatever the pipeline did, so every injected fault is named even if the pipeline missed
it. Separate from ``compare``, which judges what the pipeline told channels. Pure.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from erpsync.reconcile.facts import ErpOrder
from erpsync.reconcile.findings import Finding

COMMITTING_ORDER_STATUSES = frozenset({"entered", "released", "on_hold", "allocated"})
ERP_SHIPPED = frozenset({"shipped", "invoiced", "closed"})
CENT = Decimal("0.01")


def order_discrepancies(order: ErpOrder, now_ms: int, credit_sla_ms: int) -> list[Finding]:
    """What the ERP and WMS rows of one order show by themselves, whatever the pipeline did."""
    key, out = order.key, []

    def found(kind: str, expected: Any, actual: Any, **detail: Any) -> None:
        out.append(Finding(kind, "order", key, expected, actual, {"order_id": order.order_id, **detail}))

    if order.invoices:
        invoiced = sum((t for t, _ in order.invoices.values()), Decimal(0))
        if invoiced != order.order_total:
            found("invoice_discrepancy", str(order.order_total), str(invoiced), invoice_ids=sorted(order.invoices))
        billed = sum((f for _, f in order.invoices.values()), Decimal(0))
        freight = sum((s.freight_cost for s in order.shipments.values()), Decimal(0))
        if billed != freight:
            found("freight_discrepancy", str(freight), str(billed), invoice_ids=sorted(order.invoices),
                  shipment_ids=sorted(order.shipments))
    lines, shipped = order.live_lines(), order.shipped()
    over = {n: shipped[n] for n, ln in lines.items() if shipped[n] > ln.qty}
    if over:
        found("overship", {str(n): lines[n].qty for n in over}, {str(n): q for n, q in over.items()})
    short = sorted(n for n, ln in lines.items() if shipped[n] < ln.qty)
    if order.status in ERP_SHIPPED and lines and short:
        found("short_shipment", {str(n): lines[n].qty for n in short}, {str(n): shipped[n] for n in short},
              erp_status=order.status, spec_kind="status_mismatch")
    elif order.status in COMMITTING_ORDER_STATUSES and lines and not short:
        found("status_mismatch", order.status, "dispatched",
              reason=f"the WMS dispatched every line but the ERP still says {order.status}")
    live_allocations = [a for a in order.allocations if a[2] not in ("cancelled", "shipped")]
    if order.status == "cancelled" and live_allocations:
        found("status_mismatch", "cancelled", "allocated",
              reason="the ERP cancelled the order but the WMS still holds allocations")
    credited: dict[str, Decimal] = defaultdict(Decimal)
    for rma, amount in order.credits.values():
        if rma:
            credited[rma] += amount
    for rma, amount in sorted(credited.items()):
        returned = order.returns.get(rma)
        if returned is None:
            found("credit_discrepancy", None, str(amount), rma_id=rma, reason="no such return in the WMS")
            continue
        line = order.lines.get(returned[0])
        expected = (line.unit_price * returned[1]).quantize(CENT, ROUND_HALF_UP) if line else None
        if amount != expected:
            found("credit_discrepancy", None if expected is None else str(expected), str(amount), rma_id=rma,
                  line_no=returned[0], returned_qty=returned[1])
    for rma, (line_no, qty, received_ms) in sorted(order.returns.items()):
        if rma not in credited:
            age = None if received_ms is None else now_ms - received_ms
            found("credit_pending", "credit memo", None, rma_id=rma, line_no=line_no, returned_qty=qty,
                  received_ms=received_ms, age_ms=age, past_sla=age is not None and age > credit_sla_ms)
    return out
