"""The plan of a run: the channel orders the storefronts will send, with every fault decided in advance.

``Scenario`` is pure and decided by ``random.Random(seed)`` alone: the catalog, then for each order
its channel, customer, lines (quantities that fit every channel's ATS once the earlier clean orders
are counted), prices, totals, faults (at most one each), carrier and return. Same seed, tag and
start: same catalog, same orders. The I/O roles only carry the plans out.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from erpsync.channels import load_channels
from erpsync.simulate.catalog import JURISDICTIONS, build_catalog
from erpsync.simulate.faults import DOWNSTREAM_FAULTS, DUPLICATE, IMPORT_FAILED, INTAKE_FAULTS
from erpsync.simulate.manifest import Manifest
from erpsync.simulate.money import money
from state.channels import Channel

CARRIERS = ("UPS", "FEDEX", "DHL")
_TAG = re.compile(r"^[A-Za-z0-9]{2,16}$")


@dataclass(frozen=True, slots=True)
class ReturnPlan:
    line_no: int
    qty: int
    disposition: str  # "restock" or "scrap"


@dataclass(frozen=True)
class OrderPlan:
    """One channel order and everything decided about it in advance."""

    index: int
    doc: dict[str, Any]  # the channel order JSON (spec section 6)
    fault: str | None  # intake fault (a reason code, or "duplicate"); None: a clean order
    downstream: str | None  # discrepancy injected after intake, or "import_failed"
    detail: dict[str, Any]  # what exactly the fault changed
    carrier: str
    tracking_no: str
    return_plan: ReturnPlan | None
    delta: Decimal  # the amount an invoice/freight/credit discrepancy is off by
    resend_after: int  # duplicates: sent again after this many further orders

    @property
    def key(self) -> str:
        return f"{self.doc['channel']}:{self.doc['external_order_id']}"

    @property
    def accepted(self) -> bool:
        """Whether the pipeline should accept it (a duplicate is accepted once)."""
        return self.fault in (None, DUPLICATE)


class StockExhausted(RuntimeError):
    """The seeded stock cannot take another clean order: build the scenario with a larger max_orders."""


class Scenario:
    """The pure part of a run: catalog and order plans, decided by ``random.Random(seed)`` alone.

    ``start`` is when the first order is placed; orders are placed a few hundred ms apart after it.
    """

    def __init__(self, seed: int, tag: str, *, start: datetime | None = None, fault_rate: float = 0.15,
                 downstream_fault_rate: float = 0.05, return_rate: float = 0.1, import_failure_rate: float = 0.0,
                 max_orders: int = 1000, channels: Sequence[Channel] | None = None) -> None:
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r}: 2 to 16 letters or digits")
        for name, rate in (("fault_rate", fault_rate), ("downstream_fault_rate", downstream_fault_rate),
                           ("return_rate", return_rate), ("import_failure_rate", import_failure_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be within [0, 1], not {rate}")
        self.seed, self.tag = seed, tag
        self.fault_rate, self.downstream_fault_rate = fault_rate, downstream_fault_rate
        self.return_rate, self.import_failure_rate = return_rate, import_failure_rate
        self.channels = tuple(channels or load_channels())
        self.clock = (start or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        self.rng = random.Random(seed)
        self.catalog = build_catalog(self.rng, tag, self.clock.date(), max_orders)
        self.manifest = Manifest(tag, seed)
        self.plans: dict[str, OrderPlan] = {}
        self._count = 0
        self._demand: Counter[str] = Counter()  # units of clean orders per SKU so far

    # -- decisions

    def plan_orders(self, n: int) -> list[OrderPlan]:
        """The next n orders (continuing the sequence), recorded in the manifest."""
        plans = [self._plan() for _ in range(n)]
        for plan in plans:
            self.plans[plan.key] = plan
            self.manifest.orders[plan.key] = plan.fault
            if plan.fault is not None:
                self.manifest.details[plan.key] = plan.detail
        return plans

    @staticmethod
    def submissions(plans: Sequence[OrderPlan]) -> list[OrderPlan]:
        """The order in which plans are sent: a duplicate goes again ``resend_after`` orders later."""
        entries = [((i, 0), plan) for i, plan in enumerate(plans)]
        entries += [((i + plan.resend_after, 1), plan) for i, plan in enumerate(plans) if plan.fault == DUPLICATE]
        return [plan for _, plan in sorted(entries, key=lambda e: e[0])]

    def _weighted(self, weights: Mapping[str, int]) -> str:
        names = sorted(weights)
        return self.rng.choices(names, weights=[weights[n] for n in names])[0]

    def _ats(self, channel: Channel, sku: str) -> int:
        """The channel's ATS for a SKU once every earlier clean order is counted (spec section 5)."""
        item = self.catalog.item(sku)
        network = self.catalog.on_hand(sku, channel) - item.safety_stock - self._demand[sku]
        return max(0, int(network * channel.share_exact))

    def _plan(self) -> OrderPlan:
        rng, cat = self.rng, self.catalog
        self._count += 1
        index = self._count
        channel = rng.choices(self.channels, weights=[_CHANNEL_WEIGHTS.get(c.id, 1) for c in self.channels])[0]
        fault: str | None = None
        if rng.random() < self.fault_rate:
            # Each fault must fail exactly one rule: a backorder channel accepts any quantity, and
            # elsewhere a discontinued SKU (ATS 0) would fail the stock rule as well.
            excluded = "insufficient_stock" if channel.intake.allow_backorder else "inactive_sku"
            fault = self._weighted({k: w for k, w in INTAKE_FAULTS.items() if k != excluded})
        detail: dict[str, Any] = {}

        on_hold = [c for c in cat.customers if c.credit_hold]
        no_tax = [c for c in cat.customers if not c.credit_hold and c.tax_jurisdiction is None]
        customer = rng.choice({"credit_hold": on_hold, "missing_tax_jurisdiction": no_tax}.get(
            fault or "", [c for c in cat.customers if not c.credit_hold]))
        customer_id = customer.customer_id
        if fault == "unknown_customer":
            customer_id = f"C-{self.tag}-X{index:05d}"  # never seeded
        if fault in ("unknown_customer", "credit_hold", "missing_tax_jurisdiction"):
            detail["customer_id"] = customer_id

        active = [i.sku for i in cat.items if i.status == "active"]
        wanted = rng.choices((1, 2, 3, 4), weights=(45, 30, 15, 10))[0]
        lines: list[dict[str, Any]] = []
        for sku in rng.sample(active, wanted):
            qty = min(rng.randint(1, 12 if channel.intake.allow_terms else 5), self._ats(channel, sku))
            if qty > 0:
                price = cat.price(customer.price_list_id, sku)
                lines.append({"line_no": len(lines) + 1, "sku": sku, "qty": qty, "unit_price": f"{price:.4f}"})
        if not lines:
            raise StockExhausted(f"order {index}: no stock left for a clean {channel.id} order")

        line = rng.choice(lines)
        if fault == "price_mismatch":
            listed = Decimal(line["unit_price"])
            off = channel.intake.price_tolerance + Decimal(rng.randint(1, 99)) / 100
            sent = listed - off if listed > off and rng.random() < 0.5 else listed + off
            line["unit_price"] = f"{sent:.4f}"
            detail.update(line_no=line["line_no"], list_price=f"{listed:.4f}", sent_price=line["unit_price"])
        elif fault == "inactive_sku":
            sku = rng.choice([i.sku for i in cat.items if i.status == "discontinued"])
            line.update(sku=sku, unit_price=f"{cat.price(customer.price_list_id, sku):.4f}")
            detail.update(line_no=line["line_no"], sku=sku)
        elif fault == "insufficient_stock":
            line["qty"] = cat.total_stock(line["sku"]) + rng.randint(100, 1000)
            detail.update(line_no=line["line_no"], sku=line["sku"], qty=line["qty"])

        payment = "terms" if channel.intake.allow_terms and rng.random() < 0.5 else "approved"
        if fault == "payment_not_approved":
            payment = rng.choice(("pending", "declined") + (() if channel.intake.allow_terms else ("terms",)))
            detail["payment_status"] = payment
        tax_jurisdiction = customer.tax_jurisdiction or rng.choice(sorted(JURISDICTIONS))
        if fault == "missing_tax_jurisdiction" or (
                fault != "unknown_customer" and customer.tax_jurisdiction and rng.random() < 0.15):
            tax_jurisdiction = ""  # a clean order then falls back to the customer's jurisdiction
        method = rng.choices(("SHIP", "PICKUP", "DROPSHIP"), weights=(75, 15, 10))[0]

        merchandise = money(sum((ln["qty"] * Decimal(ln["unit_price"]) for ln in lines), Decimal(0)))
        discount = Decimal("0.00")
        if rng.random() < 0.25:
            discount = money(merchandise * rng.choice((Decimal("0.05"), Decimal("0.10"))))
        rate = JURISDICTIONS[tax_jurisdiction or customer.tax_jurisdiction or "US-TX-AUSTIN"]
        tax = money((merchandise - discount) * rate)
        freight = {"SHIP": Decimal(rng.randint(495, 2995)), "PICKUP": Decimal(0),
                   "DROPSHIP": Decimal(rng.randint(995, 3995))}[method] / 100
        self.clock += timedelta(milliseconds=rng.randint(50, 1500))
        offset = rng.choice((0, 0, 0, -5, 2))  # most channels send Z, some a local offset
        placed = self.clock.astimezone(timezone(timedelta(hours=offset))).isoformat(timespec="milliseconds")
        doc = {
            "channel": channel.id,
            "external_order_id": f"{self.tag}-{_CHANNEL_PREFIX.get(channel.id, 'CH')}-{index:06d}",
            "customer_id": customer_id, "payment_status": payment, "tax_jurisdiction": tax_jurisdiction,
            "fulfillment_method": method, "currency": "USD", "placed_at": placed.replace("+00:00", "Z"),
            "freight_total": f"{freight:.2f}", "discount_total": f"{discount:.2f}", "tax_total": f"{tax:.2f}",
            "lines": lines,
        }

        downstream: str | None = None
        if fault is None:
            if rng.random() < self.import_failure_rate:
                downstream = IMPORT_FAILED
            elif rng.random() < self.downstream_fault_rate:
                downstream = self._weighted(DOWNSTREAM_FAULTS)
        return_plan = None
        if fault in (None, DUPLICATE) and downstream != IMPORT_FAILED and (
                downstream in ("credit_pending", "credit_discrepancy")
                or (downstream is None and rng.random() < self.return_rate)):
            returned = rng.choice(lines)
            return_plan = ReturnPlan(returned["line_no"], rng.randint(1, returned["qty"]),
                                     rng.choices(("restock", "scrap"), weights=(7, 3))[0])
        if fault in (None, DUPLICATE):
            self._demand.update({ln["sku"]: ln["qty"] for ln in lines})
        resend_after = rng.randint(0, 5) if fault == DUPLICATE else 0
        if fault == DUPLICATE:
            detail["resend_after"] = resend_after
        carrier = rng.choice(CARRIERS)
        return OrderPlan(
            index=index, doc=doc, fault=fault, downstream=downstream, detail=detail, carrier=carrier,
            tracking_no=_tracking_no(rng, carrier), return_plan=return_plan,
            delta=Decimal(rng.randint(1, 2500)) / 100 * rng.choice((1, -1)), resend_after=resend_after)


_CHANNEL_WEIGHTS = {"b2b-portal": 4, "marketplace": 4, "inside-sales": 2}
_CHANNEL_PREFIX = {"b2b-portal": "PO", "marketplace": "MP", "inside-sales": "IS"}


def _tracking_no(rng: random.Random, carrier: str) -> str:
    digits = "".join(rng.choices("0123456789", k=12))
    return {"UPS": "1Z" + "".join(rng.choices("0123456789ABCDEFGHJKLMNPRSTUVWXYZ", k=16)),
            "FEDEX": digits, "DHL": digits[:10]}[carrier]
