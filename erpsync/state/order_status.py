"""The true status of an order (spec section 7), derived from every fact about it, not the last event.

``OrderFacts`` holds what the ERP, the WMS and intake governance have said about one order, each
row fenced by its source position; ``derive`` turns the facts into the OrderStatus a channel sees,
in the spec's precedence. Publishing only when ``visible`` differs keeps channels free of noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from erpsync.records import Emit
from erpsync.state import newer

ORDER_STATUS_SCHEMA = "io.erpsync.OrderStatus"
SHIPPED_STATES = frozenset({"dispatched", "delivered"})


@dataclass(frozen=True, slots=True)
class IntakeDecision:
    """Intake governance accepted (reasons empty) or rejected an order."""

    channel: str
    external_order_id: str
    reasons: tuple[str, ...]
    event_ms: int


@dataclass(slots=True)
class OrderFacts:
    """Everything known about one channel order. Rows are (position, ...) so stale events are ignored."""

    intake: IntakeDecision | None = None
    header: tuple[str, int, str] | None = None  # position, order_id, status
    lines: dict[int, tuple[str, str, int, str]] = field(default_factory=dict)  # pos, sku, qty, status
    allocations: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)  # pos, line, qty, status
    # shipment id -> (pos, carrier, tracking no, status)
    shipments: dict[int, tuple[str, str, str | None, str]] = field(default_factory=dict)
    shipment_lines: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)  # pos, qty
    invoices: dict[int, str] = field(default_factory=dict)  # invoice id -> pos
    last_fact_ms: int = 0

    def apply(self, event: Emit | IntakeDecision) -> bool:
        """Record a fact; False when it is stale or a duplicate (nothing changed)."""
        if isinstance(event, IntakeDecision):
            if self.intake == event:
                return False
            self.intake = event
            self.last_fact_ms = max(self.last_fact_ms, event.event_ms)
            return True
        v = event.value
        src = v["source"]
        position, deleted = src["position"], v["op"] == "delete"
        topic = event.topic
        if topic == "canonical.order":
            if not newer(self.header, position):
                return False
            self.header = (position, v["order_id"], "deleted" if deleted else v["status"])
        elif topic == "canonical.order-line":
            if not newer(self.lines.get(v["line_no"]), position):
                return False
            if deleted:
                self.lines[v["line_no"]] = (position, "", 0, "deleted")
            else:
                self.lines[v["line_no"]] = (position, v["sku"], v["qty"], v["status"])
        elif topic == "canonical.allocation":
            if not newer(self.allocations.get(v["allocation_id"]), position):
                return False
            self.allocations[v["allocation_id"]] = (position, v["line_no"], v["qty"] or 0,
                                                    "deleted" if deleted else v["status"])
        elif topic == "canonical.shipment":
            if not newer(self.shipments.get(v["shipment_id"]), position):
                return False
            self.shipments[v["shipment_id"]] = (position, v["carrier"] or "", v["tracking_no"],
                                                "deleted" if deleted else v["status"])
        elif topic == "canonical.shipment-line":
            key = (v["shipment_id"], v["line_no"])
            if not newer(self.shipment_lines.get(key), position):
                return False
            self.shipment_lines[key] = (position, 0 if deleted else v["qty"])
        elif topic == "canonical.invoice":
            old = self.invoices.get(v["invoice_id"])
            if old is not None and position <= old:
                return False
            if deleted:
                self.invoices.pop(v["invoice_id"], None)
            else:
                self.invoices[v["invoice_id"]] = position
        else:
            return False
        self.last_fact_ms = max(self.last_fact_ms, int(src["commit_ts_ms"]))
        return True


def derive(facts: OrderFacts, channel: str, external_order_id: str) -> dict[str, Any] | None:
    """The OrderStatus record for a channel, or None while nothing is known to show."""
    header = facts.header if facts.header is not None and facts.header[2] != "deleted" else None
    lines = {n: line for n, line in facts.lines.items() if line[3] in ("open", "shipped")}
    allocated: dict[int, int] = {}
    for _, line_no, qty, status in facts.allocations.values():
        if status not in ("cancelled", "deleted"):
            allocated[line_no] = allocated.get(line_no, 0) + qty
    shipped: dict[int, int] = {}
    for (shipment_id, line_no), (_, qty) in facts.shipment_lines.items():
        shipment = facts.shipments.get(shipment_id)
        if shipment is not None and shipment[3] in SHIPPED_STATES:
            shipped[line_no] = shipped.get(line_no, 0) + qty
    live_shipments = [s for s in facts.shipments.values() if s[3] != "deleted"]

    reasons: list[str] = []
    if header is not None:
        erp_status = header[2]
        covered = bool(lines)
        if erp_status == "cancelled":
            status = "cancelled"
        elif erp_status == "closed":
            status = "closed"
        elif facts.invoices:
            status = "invoiced"
        elif covered and all(shipped.get(n, 0) >= qty for n, (_, _, qty, _) in lines.items()):
            status = "shipped"
        elif any(shipped.get(n, 0) > 0 for n in lines):
            status = "partially_shipped"
        elif covered and all(allocated.get(n, 0) >= qty for n, (_, _, qty, _) in lines.items()):
            status = "allocated"
        elif erp_status == "on_hold":
            status = "on_hold"
        else:
            status = "accepted"
    elif facts.intake is not None:
        status = "rejected" if facts.intake.reasons else "received"
        reasons = list(facts.intake.reasons)
    else:
        return None
    return {
        "channel": channel,
        "external_order_id": external_order_id,
        "order_id": header[1] if header is not None else None,
        "status": status,
        "reasons": reasons,
        "lines": [{"line_no": n, "sku": sku, "ordered": qty, "allocated": allocated.get(n, 0),
                   "shipped": shipped.get(n, 0)} for n, (_, sku, qty, _) in sorted(lines.items())],
        "carriers": sorted({s[1] for s in live_shipments if s[1]}),
        "tracking_numbers": sorted({s[2] for s in live_shipments if s[2]}),
        "last_fact_ms": facts.last_fact_ms,
    }


def visible(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a channel can see of a status record: all of it but the time of the newest fact."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k != "last_fact_ms"}
