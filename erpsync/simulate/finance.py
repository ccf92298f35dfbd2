"""The ERP's back office: invoices for shipped orders, returns received in the WMS, credit memos for them.

Where most downstream faults are injected, as a real back office makes them: an invoice total or
freight that does not add up, a credit memo with a wrong amount, a return never credited. A credit
memo comes at least one round after its return.
"""

from __future__ import annotations

from decimal import Decimal

from erpsync.simulate.faults import off_by
from erpsync.simulate.money import money
from erpsync.simulate.scenario import OrderPlan
from erpsync.simulate.systems import Role


class Finance(Role):
    """The ERP's back office for a run's orders: invoices, returns, credit memos."""

    def step(self) -> int:
        """Invoice shipped orders, credit earlier returns, receive planned returns of invoiced orders.

        A credit memo comes at least one step after its return, as in a real back office.
        """
        return self._invoice() + self._credit() + self._receive_returns()

    def _invoice(self) -> int:
        erp = self.systems.erp()
        shipped = erp.execute(
            "SELECT order_id, channel, external_order_id, order_total, tax_total FROM erp.sales_orders"
            " WHERE external_order_id LIKE %s AND status = 'shipped' ORDER BY order_id",
            (self.systems.like(),)).fetchall()
        if not shipped:
            return 0
        with self.systems.wms_tx() as cur:
            cur.execute("SELECT order_id, SUM(freight_cost) FROM shipments WHERE order_id IN %s"
                        " AND status IN ('dispatched', 'delivered') GROUP BY order_id",
                        (tuple(r[0] for r in shipped),))
            freight = {int(o): Decimal(f) for o, f in cur.fetchall()}
        for order_id, channel, external_id, order_total, tax_total in shipped:
            key = f"{channel}:{external_id}"
            plan = self.scenario.plans.get(key)
            total, freight_total = order_total, freight.get(order_id, Decimal("0.00"))
            kind = plan.downstream if plan else None
            if plan is not None and kind == "invoice_discrepancy":
                total = off_by(order_total, plan.delta)
            elif plan is not None and kind == "freight_discrepancy":
                freight_total = freight_total + abs(plan.delta)  # a carrier surcharge billed, not in the WMS
            with erp.transaction():
                posted = erp.execute(
                    "INSERT INTO erp.invoices (invoice_id, order_id, invoice_total, tax_total, freight_total)"
                    " SELECT %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM erp.invoices WHERE order_id = %s)",
                    (self.systems.next_id(), order_id, total, tax_total, freight_total, order_id)).rowcount
                self.systems.erp_status(order_id, "shipped", "invoiced")
            if posted and kind in ("invoice_discrepancy", "freight_discrepancy"):
                self.manifest.downstream[key] = str(kind)
                self.manifest.details[key] = {"order_total": str(order_total), "invoice_total": str(total),
                                              "shipments_freight": str(freight.get(order_id, Decimal("0.00"))),
                                              "invoice_freight": str(freight_total)}
        return len(shipped)

    def _rma_id(self, plan: OrderPlan) -> str:
        return f"RMA-{self.scenario.tag}-{plan.index:06d}"

    def _receive_returns(self) -> int:
        due = {p.doc["external_order_id"]: p for p in self.scenario.plans.values()
               if p.return_plan is not None and p.key not in self.manifest.returns}
        if not due:
            return 0
        erp = self.systems.erp()
        invoiced = erp.execute(
            "SELECT o.order_id, o.channel, o.external_order_id, l.line_no, l.sku"
            " FROM erp.sales_orders o JOIN erp.sales_order_lines l USING (order_id)"
            " WHERE o.external_order_id = ANY(%s) AND o.status = 'invoiced'", (list(due),)).fetchall()
        done = 0
        for order_id, channel, external_id, line_no, sku in invoiced:
            plan = due[external_id]
            ret = plan.return_plan
            if ret is None or ret.line_no != line_no or plan.key != f"{channel}:{external_id}":
                continue
            rma_id = self._rma_id(plan)
            with self.systems.wms_tx() as cur:
                cur.execute("SELECT location FROM shipments s JOIN shipment_lines l USING (shipment_id)"
                            " WHERE s.order_id = %s AND l.line_no = %s ORDER BY shipment_id LIMIT 1",
                            (order_id, line_no))
                shipped_from = cur.fetchone()
                received = cur.execute(
                    "INSERT IGNORE INTO returns (rma_id, order_id, line_no, sku, qty, disposition, received_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(6))",
                    (rma_id, order_id, line_no, sku, ret.qty, ret.disposition))
                if received and ret.disposition == "restock" and shipped_from:
                    cur.execute("UPDATE inventory_balances SET on_hand = on_hand + %s, updated_at = UTC_TIMESTAMP(6)"
                                " WHERE sku = %s AND location = %s", (ret.qty, sku, shipped_from[0]))
            self.manifest.returns[plan.key] = rma_id
            if plan.downstream == "credit_pending":
                self.manifest.downstream[plan.key] = "credit_pending"
                self.manifest.details[plan.key] = {"rma_id": rma_id}
            done += 1
        return done

    def _credit(self) -> int:
        due = {self.manifest.returns[k]: p for k, p in self.scenario.plans.items()
               if k in self.manifest.returns and k not in self.manifest.credits and p.downstream != "credit_pending"}
        if not due:
            return 0
        erp = self.systems.erp()
        for rma_id, credit_id in erp.execute("SELECT rma_id, credit_memo_id FROM erp.credit_memos"
                                             " WHERE rma_id = ANY(%s)", (list(due),)).fetchall():
            self.manifest.credits[due.pop(rma_id).key] = int(credit_id)  # posted by an earlier step
        lines = erp.execute(
            "SELECT o.order_id, o.channel, o.external_order_id, l.line_no, l.unit_price"
            " FROM erp.sales_orders o JOIN erp.sales_order_lines l USING (order_id)"
            " WHERE o.external_order_id = ANY(%s)", ([p.doc["external_order_id"] for p in due.values()],)).fetchall()
        prices = {(f"{c}:{e}", no): (order_id, price) for order_id, c, e, no, price in lines}
        for rma_id, plan in due.items():
            ret = plan.return_plan
            if ret is None or (plan.key, ret.line_no) not in prices:
                continue
            order_id, unit_price = prices[(plan.key, ret.line_no)]
            expected = money(ret.qty * unit_price)
            amount = expected
            if plan.downstream == "credit_discrepancy":
                amount = off_by(expected, plan.delta)
                self.manifest.downstream[plan.key] = "credit_discrepancy"
                self.manifest.details[plan.key] = {"rma_id": rma_id, "expected": str(expected),
                                                   "credited": str(amount)}
            credit_id = self.systems.next_id()
            erp.execute("INSERT INTO erp.credit_memos (credit_memo_id, order_id, rma_id, amount, reason)"
                        " VALUES (%s, %s, %s, %s, %s)", (credit_id, order_id, rma_id, amount,
                                                         f"return ({ret.disposition})"))
            self.manifest.credits[plan.key] = credit_id
        return len(due)
