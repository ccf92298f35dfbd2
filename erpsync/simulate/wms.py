"""The WMS, and the ERP following it: allocate, pick and ship this run's ERP orders, one stage a round.

Allocation takes one location where it can, else splits a line. Shipping makes one dispatched
shipment per location, their freight costs adding up to the order's freight, and leaves a unit
behind where the plan injects a short shipment. The ERP then marks lines and the order shipped from
what the WMS dispatched.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from erpsync.simulate.money import split_cents
from erpsync.simulate.systems import Role

log = logging.getLogger(__name__)


@dataclass
class _ErpOrder:
    order_id: int
    key: str
    status: str
    freight_total: Decimal
    lines: dict[int, tuple[str, int]] = field(default_factory=dict)  # open lines: line_no -> (sku, qty)


@dataclass(frozen=True, slots=True)
class _Allocation:
    allocation_id: int
    order_id: int
    line_no: int
    sku: str
    location: str
    qty: int
    status: str


class Warehouse(Role):
    """Fulfils a run's ERP orders in the WMS; the ERP follows."""

    def step(self) -> int:
        """Move each of this run's ERP orders one WMS stage on; the ERP follows.

        'entered': allocate (ERP -> 'allocated'); 'allocated': pick, then ship (ERP -> lines and
        order 'shipped').
        """
        rows = self.systems.erp().execute(
            "SELECT o.order_id, o.channel, o.external_order_id, o.status, o.freight_total, l.line_no, l.sku,"
            " l.qty FROM erp.sales_orders o JOIN erp.sales_order_lines l USING (order_id)"
            " WHERE o.external_order_id LIKE %s AND o.status IN ('entered', 'allocated') AND l.status = 'open'"
            " ORDER BY o.order_id, l.line_no", (self.systems.like(),)).fetchall()
        orders: dict[int, _ErpOrder] = {}
        for order_id, channel, external_id, status, freight, line_no, sku, qty in rows:
            order = orders.setdefault(order_id, _ErpOrder(order_id, f"{channel}:{external_id}", status, freight))
            order.lines[line_no] = (sku, qty)
        if not orders:
            return 0
        allocations: dict[int, list[_Allocation]] = defaultdict(list)
        with self.systems.wms_tx() as cur:
            cur.execute("SELECT allocation_id, order_id, line_no, sku, location, qty, status FROM allocations"
                        " WHERE order_id IN %s AND status <> 'cancelled'", (tuple(orders),))
            for row in cur.fetchall():
                allocations[row[1]].append(_Allocation(*row))
        for order in orders.values():
            mine = allocations.get(order.order_id, [])
            statuses = {a.status for a in mine}
            if order.status == "entered":
                if mine or self._allocate(order):
                    self.systems.erp_status(order.order_id, "entered", "allocated")
            elif "allocated" in statuses:
                with self.systems.wms_tx() as cur:
                    cur.execute("UPDATE allocations SET status = 'picked', updated_at = UTC_TIMESTAMP(6)"
                                " WHERE order_id = %s AND status = 'allocated'", (order.order_id,))
            elif "picked" in statuses:
                self._ship(order, [a for a in mine if a.status == "picked"])
                self._erp_shipped(order)
            elif statuses == {"shipped"}:  # shipped before the ERP heard of it (an interrupted step)
                self._erp_shipped(order)
        return len(orders)

    def _allocate(self, order: _ErpOrder) -> bool:
        """Allocate every open line, at one location if it can, else split.

        False, changing nothing, when the stock is not there.
        """
        prefer_east = order.key.startswith("marketplace:")  # the marketplace sells DC-EAST stock
        with self.systems.wms_tx() as cur:
            cur.execute("SELECT sku, location, on_hand - allocated FROM inventory_balances WHERE sku IN %s"
                        " FOR UPDATE", (tuple({sku for sku, _ in order.lines.values()}),))
            free: dict[str, dict[str, int]] = defaultdict(dict)
            for sku, location, qty in cur.fetchall():
                free[sku][location] = max(0, int(qty))
            picks: list[tuple[int, str, str, int]] = []
            for line_no, (sku, qty) in sorted(order.lines.items()):
                where = sorted(free[sku].items(), key=lambda lq: (not (prefer_east and lq[0] == "DC-EAST"),
                                                                  lq[1] < qty, -lq[1], lq[0]))
                left = qty
                for location, available in where:
                    take = min(left, available)
                    if take:
                        picks.append((line_no, sku, location, take))
                        free[sku][location] -= take
                        left -= take
                if left:  # nothing written yet: committing just releases the row locks
                    log.warning("order %s line %d: %d of %s short in the WMS; allocation retried later",
                                order.key, line_no, left, sku)
                    return False
            cur.executemany("INSERT INTO allocations (order_id, line_no, sku, location, qty, status, updated_at)"
                            " VALUES (%s, %s, %s, %s, %s, 'allocated', UTC_TIMESTAMP(6))",
                            [(order.order_id, line_no, sku, loc, qty) for line_no, sku, loc, qty in picks])
            cur.executemany("UPDATE inventory_balances SET allocated = allocated + %s, updated_at = UTC_TIMESTAMP(6)"
                            " WHERE sku = %s AND location = %s", [(qty, sku, loc) for _, sku, loc, qty in picks])
        return True

    def _ship(self, order: _ErpOrder, picked: list[_Allocation]) -> None:
        """Ship picked allocations: one dispatched shipment per location.

        The shipments' freight costs add up to the order's freight. A planned short shipment leaves one
        unit of the largest line behind.
        """
        plan = self.scenario.plans.get(order.key)
        by_location: dict[str, list[_Allocation]] = defaultdict(list)
        for a in picked:
            by_location[a.location].append(a)
        short_line = None
        if plan is not None and plan.downstream == "short_shipment":
            short_line = max(sorted(order.lines), key=lambda no: order.lines[no][1])
        short: dict[str, Any] | None = None
        ids = [self.systems.next_id() for _ in by_location]
        freights = split_cents(order.freight_total, len(by_location))
        carrier, tracking = (plan.carrier, plan.tracking_no) if plan else ("UPS", f"SIM{ids[0]}")
        with self.systems.wms_tx() as cur:
            for n, (location, allocs) in enumerate(sorted(by_location.items())):
                shipped = {a.allocation_id: a.qty for a in allocs}
                for a in allocs:
                    if a.line_no == short_line and short is None:
                        shipped[a.allocation_id] -= 1
                        short = {"line_no": a.line_no, "ordered": order.lines[a.line_no][1],
                                 "shipped": order.lines[a.line_no][1] - 1, "shipment_id": ids[n]}
                by_line: Counter[int] = Counter()
                for a in allocs:
                    by_line[a.line_no] += shipped[a.allocation_id]
                cur.execute(
                    "INSERT INTO shipments (shipment_id, order_id, location, carrier, tracking_no, status,"
                    " freight_cost, shipped_at) VALUES (%s, %s, %s, %s, %s, 'dispatched', %s, UTC_TIMESTAMP(6))",
                    (ids[n], order.order_id, location, carrier, tracking if n == 0 else f"{tracking}-{n}",
                     freights[n]))
                cur.executemany("INSERT INTO shipment_lines (shipment_id, line_no, sku, qty) VALUES (%s, %s, %s, %s)",
                                [(ids[n], no, order.lines[no][0], qty) for no, qty in sorted(by_line.items())
                                 if qty > 0])
                cur.executemany("UPDATE allocations SET status = 'shipped', updated_at = UTC_TIMESTAMP(6)"
                                " WHERE allocation_id = %s", [(a.allocation_id,) for a in allocs])
                # The allocation is released in full; a unit not shipped stays on hand.
                cur.executemany(
                    "UPDATE inventory_balances SET on_hand = on_hand - %s, allocated = allocated - %s,"
                    " updated_at = UTC_TIMESTAMP(6) WHERE sku = %s AND location = %s",
                    [(shipped[a.allocation_id], a.qty, a.sku, location) for a in allocs])
        if short is not None:
            self.manifest.downstream[order.key] = "short_shipment"
            self.manifest.details[order.key] = short

    def _erp_shipped(self, order: _ErpOrder) -> None:
        """The ERP marks fully shipped lines and the order shipped, from what the WMS dispatched."""
        with self.systems.wms_tx() as cur:
            cur.execute("SELECT l.line_no, SUM(l.qty) FROM shipment_lines l JOIN shipments s USING (shipment_id)"
                        " WHERE s.order_id = %s AND s.status IN ('dispatched', 'delivered') GROUP BY l.line_no",
                        (order.order_id,))
            shipped = {int(no): int(qty) for no, qty in cur.fetchall()}
        full = [no for no, (_, qty) in order.lines.items() if shipped.get(no, 0) >= qty]
        erp = self.systems.erp()
        with erp.transaction():
            if full:
                erp.execute("UPDATE erp.sales_order_lines SET status = 'shipped' WHERE order_id = %s"
                            " AND line_no = ANY(%s) AND status = 'open'", (order.order_id, full))
            self.systems.erp_status(order.order_id, "allocated", "shipped")
