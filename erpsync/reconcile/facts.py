"""What reconcile reads from each system, as plain data: the readers fill it, the pure stages consume it.

The systems of record's rows (``InventoryFacts``, ``ErpOrder`` with its lines, allocations,
shipments, invoices, returns and credits) and what channels were told (``Published``, the ops
database; ``TopicValues``, the channel topics). Kept apart from the readers so that recomputing and
comparing need no database or Kafka client, and are unit-tested with hand-built facts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from erpsync.reconcile.kpis import Latency

DISPATCHED = frozenset({"dispatched", "delivered"})


@dataclass(frozen=True, slots=True)
class PendingIntake:
    """One line of an erp.order_intake row that is pending and not (yet) in erp.sales_orders."""

    channel: str
    external_order_id: str
    sku: str
    qty: int
    accepted_ms: int  # payload.accepted_at_ms: when intake governance accepted it (the TTL starts there)


@dataclass
class InventoryFacts:
    """The source rows the ATS formula needs, for the SKUs in scope."""

    items: dict[str, tuple[int, str]] = field(default_factory=dict)  # sku -> (safety_stock, status)
    # sku -> location -> (on_hand, allocated, in_transit)
    balances: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    # open lines of orders in a committing status: (order_id, line_no, sku, qty)
    open_lines: list[tuple[int, int, str, int]] = field(default_factory=list)
    wms_allocated: dict[tuple[int, int], int] = field(default_factory=dict)  # Σ allocations.qty not cancelled
    pending_intake: list[PendingIntake] = field(default_factory=list)
    now_ms: int = 0  # the ERP's clock when it was read: intake TTLs are measured against it

    def skus(self) -> set[str]:
        return (set(self.items) | set(self.balances) | {sku for _, _, sku, _ in self.open_lines}
                | {p.sku for p in self.pending_intake})

    def known(self) -> set[str]:
        """SKUs the item master or the WMS stock has: the pipeline must have published them."""
        return set(self.items) | set(self.balances)


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    qty: int
    unit_price: Decimal
    status: str  # open | cancelled | shipped


@dataclass(frozen=True, slots=True)
class Shipment:
    carrier: str
    tracking_no: str | None
    status: str  # packed | dispatched | delivered
    freight_cost: Decimal


@dataclass
class ErpOrder:
    """One ERP sales order with every ERP and WMS row about it."""

    order_id: int
    channel: str
    external_order_id: str
    status: str
    order_total: Decimal
    lines: dict[int, Line] = field(default_factory=dict)
    allocations: list[tuple[int, int, str]] = field(default_factory=list)  # line_no, qty, status
    shipments: dict[int, Shipment] = field(default_factory=dict)
    shipment_lines: list[tuple[int, int, int]] = field(default_factory=list)  # shipment_id, line_no, qty
    invoices: dict[int, tuple[Decimal, Decimal]] = field(default_factory=dict)  # id -> (total, freight)
    returns: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)  # rma -> line, qty, received ms
    credits: dict[int, tuple[str | None, Decimal]] = field(default_factory=dict)  # id -> (rma_id, amount)

    @property
    def key(self) -> str:
        return f"{self.channel}/{self.external_order_id}"

    def live_lines(self) -> dict[int, Line]:
        """Lines that count for the status: every line not cancelled."""
        return {n: ln for n, ln in self.lines.items() if ln.status != "cancelled"}

    def allocated(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for line_no, qty, status in self.allocations:
            if status != "cancelled":
                out[line_no] += qty
        return out

    def shipped(self) -> Counter[int]:
        """Per line: quantities on dispatched or delivered shipments."""
        out: Counter[int] = Counter()
        for shipment_id, line_no, qty in self.shipment_lines:
            s = self.shipments.get(shipment_id)
            if s is not None and s.status in DISPATCHED:
                out[line_no] += qty
        return out


@dataclass
class Published:
    """What the operations database says channels were told, and its KPI inputs."""

    availability: dict[tuple[str, str], dict[str, Any]]
    order_status: dict[str, dict[str, Any]]
    latency: dict[str, Latency]
    open_exceptions: dict[str, int] | None
    exception_orders: set[str]


TopicValues = dict[tuple[str, str], dict[str, Any] | None]  # (topic, key) -> latest value, None: a tombstone
