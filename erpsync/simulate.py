"""``erpsync simulate``: a reference workload that plays the channels, the ERP and the WMS around the pipeline.

Everything the workload decides comes from one ``random.Random(seed)``: the catalog it seeds, the
channel orders it sends to ``commerce.orders`` and the faults it injects, each order carrying at most
one. Every id is derived from a run ``tag`` so runs never collide. Two parts:

- ``Scenario`` is pure: the catalog and the planned orders (with their faults) of a run, and the
  ``Manifest`` of what was planned and done. Same seed, tag and start: same catalog, same orders.
- ``Workload`` does the I/O: seeds the ERP and WMS, produces the orders, then plays the ERP's order
  import, the WMS (allocate, pick, ship) and ERP finance (invoices, credit memos) for the orders the
  pipeline wrote into ``erp.order_intake``. Every step acts only on this run's rows that are in the
  state it expects, so calling it again (or after a crash) is safe.

Normal orders are clean under every rule of spec sections 6 and 9: their prices are the price list's,
their quantities fit every channel's ATS (counting every earlier accepted order), the WMS freight
cost of their shipments adds up to the order's freight, and their invoice equals the order total.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from erpsync.channels import configured_channels, load_channels
from erpsync.settings import Settings
from state.channels import Channel

log = logging.getLogger(__name__)

ORDERS_TOPIC = "commerce.orders"
LOCATIONS = ("DC-EAST", "DC-WEST", "DC-CENTRAL")
CARRIERS = ("UPS", "FEDEX", "DHL")
# Ids the workload allocates (orders, invoices, credit memos, shipments) come from one sequence that
# starts above 32 bits: far from hand-written test ids, and a truncation to int32 anywhere shows.
ID_SEQUENCE = "erp.erpsync_sim_id"
ID_START = 5_000_000_000

DUPLICATE = "duplicate"  # sent twice; accepted once, not a rejection
# Intake faults (spec section 6 reason codes, plus duplicate) and their relative weights.
INTAKE_FAULTS: Mapping[str, int] = {
    "price_mismatch": 3, DUPLICATE: 3, "missing_tax_jurisdiction": 2, "unknown_customer": 2,
    "credit_hold": 2, "insufficient_stock": 2, "payment_not_approved": 1, "inactive_sku": 1,
}
# Discrepancies injected after intake (spec section 9 kinds, plus a failed ERP import).
DOWNSTREAM_FAULTS: Mapping[str, int] = {
    "short_shipment": 3, "invoice_discrepancy": 2, "freight_discrepancy": 2, "credit_pending": 2,
    "credit_discrepancy": 1,
}
IMPORT_FAILED = "import_failed"
STAGES = ("imported", "allocated", "shipped", "invoiced")  # "failed" ends an order instead
_STAGE_OF_STATUS = {"allocated": "allocated", "shipped": "shipped", "invoiced": "invoiced", "closed": "invoiced"}

JURISDICTIONS: Mapping[str, Decimal] = {
    "US-TX-AUSTIN": Decimal("0.0825"), "US-CA-SANFRANCISCO": Decimal("0.08625"),
    "US-NY-NEWYORK": Decimal("0.08875"), "US-IL-CHICAGO": Decimal("0.1025"),
    "US-WA-SEATTLE": Decimal("0.1035"), "US-GA-ATLANTA": Decimal("0.089"),
}
_WORDS = ("Hex bolt M8", "Flange nut M10", "Cable tie 200mm", "Wood screw 4x40", "Pipe clamp 22mm",
          "Washer M12", "Anchor plug 8mm", "Hinge 75mm", "Drill bit 6mm", "Wall plug 10mm",
          "Spring pin 3x20", "Rivet 4x10", "Threaded rod M6", "Eye bolt M8")
_NAMES = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell",
          "Cyberdyne", "Hooli", "Vandelay")
_TAG = re.compile(r"^[A-Za-z0-9]{2,16}$")
CENT = Decimal("0.01")
PRICE_SCALE = Decimal("0.0001")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# ----------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class SimCustomer:
    customer_id: str
    account_no: str
    name: str
    price_list_id: str
    credit_limit: Decimal
    credit_hold: bool
    tax_jurisdiction: str | None


@dataclass(frozen=True, slots=True)
class SimItem:
    sku: str
    description: str
    safety_stock: int
    status: str  # "active" or "discontinued"


@dataclass(frozen=True, slots=True)
class SimPrice:
    price_list_id: str
    sku: str
    unit_price: Decimal
    valid_from: date
    valid_to: date | None


@dataclass(frozen=True, slots=True)
class SimStock:
    sku: str
    location: str
    on_hand: int
    in_transit: int


@dataclass(frozen=True)
class SimCatalog:
    """Master data and stock one run seeds into the ERP and WMS."""

    customers: tuple[SimCustomer, ...]
    items: tuple[SimItem, ...]
    prices: tuple[SimPrice, ...]
    stock: tuple[SimStock, ...]

    def price(self, price_list_id: str, sku: str) -> Decimal:
        """The open-ended (current) price of a SKU on a price list."""
        return next(p.unit_price for p in self.prices
                    if p.price_list_id == price_list_id and p.sku == sku and p.valid_to is None)

    def item(self, sku: str) -> SimItem:
        return next(i for i in self.items if i.sku == sku)

    def on_hand(self, sku: str, channel: Channel) -> int:
        """On hand of a SKU at the locations a channel sees (in transit left out: it cannot ship yet)."""
        return sum(s.on_hand for s in self.stock if s.sku == sku and channel.sees(s.location))

    def total_stock(self, sku: str) -> int:
        return sum(s.on_hand + s.in_transit for s in self.stock if s.sku == sku)


def build_catalog(rng: random.Random, tag: str, today: date, max_orders: int) -> SimCatalog:
    """The master data and stock of a run, sized for ``max_orders`` orders.

    Twelve customers (two on credit hold, two without a tax jurisdiction), twelve items (two
    discontinued), three price lists (some items with an expired older line) and stock at every
    reference location, some of it in transit.
    """
    price_lists = [f"PL-{tag}-{c}" for c in "ABC"]
    factors = {price_lists[0]: Decimal(1), price_lists[1]: Decimal("0.95"), price_lists[2]: Decimal("0.90")}
    items = tuple(
        SimItem(f"SKU-{tag}-{i:02d}", rng.choice(_WORDS), rng.randint(0, 10), "discontinued" if i > 10 else "active")
        for i in range(1, 13))
    roles = ["hold"] * 2 + ["notax"] * 2 + ["normal"] * 8
    rng.shuffle(roles)
    customers = tuple(
        SimCustomer(
            customer_id=f"C-{tag}-{i:03d}", account_no=f"A-{tag}-{i:03d}",
            name=f"{rng.choice(_NAMES)} {rng.choice(('Supply', 'Hardware', 'Industrial', 'Builders'))} {i}",
            price_list_id=rng.choice(price_lists),
            credit_limit=Decimal(rng.randint(50, 500) * 100),
            credit_hold=role == "hold",
            tax_jurisdiction=None if role == "notax" else rng.choice(sorted(JURISDICTIONS)))
        for i, role in enumerate(roles, 1))
    prices: list[SimPrice] = []
    for item in items:
        base = Decimal(rng.randint(150, 25_000)) / 100 + Decimal(rng.choice((0, 0, 25, 75))) / 10_000
        valid_from = today - timedelta(days=rng.randint(30, 400))
        expired = rng.random() < 0.35  # an older line, no longer valid: the rule must pick by date
        for pl in price_lists:
            price = (base * factors[pl]).quantize(PRICE_SCALE)
            prices.append(SimPrice(pl, item.sku, price, valid_from, None))
            if expired:
                prices.append(SimPrice(pl, item.sku, (price * Decimal("0.9")).quantize(PRICE_SCALE),
                                       valid_from - timedelta(days=365), valid_from - timedelta(days=1)))
    base_qty = {"DC-EAST": 2 * max_orders, "DC-WEST": max_orders, "DC-CENTRAL": max_orders // 2}
    stock = tuple(
        SimStock(item.sku, loc,
                 rng.randint(0, 40) if item.status == "discontinued" else base_qty[loc] + rng.randint(150, 250),
                 rng.randint(10, 200) if rng.random() < 0.33 else 0)
        for item in items for loc in LOCATIONS)
    return SimCatalog(customers, items, tuple(prices), stock)


# ----------------------------------------------------------------------------- plans and manifest


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


@dataclass
class Manifest:
    """What a run planned, submitted and did: the ground truth for tests and reconciliation.

    Order keys are ``<channel>:<external_order_id>`` as on ``commerce.orders``.
    """

    tag: str
    seed: int
    orders: dict[str, str | None] = field(default_factory=dict)  # key -> expected intake fault, None: clean
    submitted: int = 0  # messages delivered to commerce.orders (a duplicate counts twice)
    downstream: dict[str, str] = field(default_factory=dict)  # key -> discrepancy actually injected
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> what the fault changed
    erp_order_ids: dict[str, int] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # key -> furthest stage reached, or "failed"
    returns: dict[str, str] = field(default_factory=dict)  # key -> WMS rma_id
    credits: dict[str, int] = field(default_factory=dict)  # key -> ERP credit_memo_id
    drained: bool = False  # every expected order finished before the timeout

    def expected_rejections(self) -> dict[str, str]:
        """Order key -> the reason code the pipeline must reject it with."""
        return {k: f for k, f in self.orders.items() if f is not None and f != DUPLICATE}

    def expected_accepted(self) -> list[str]:
        return [k for k, f in self.orders.items() if f in (None, DUPLICATE)]

    def reached(self, stage: str) -> int:
        """How many orders reached a stage (or a later one)."""
        at = STAGES.index(stage)
        return sum(1 for s in self.stages.values() if s in STAGES and STAGES.index(s) >= at)

    def summary(self) -> dict[str, Any]:
        return {
            "orders": len(self.orders), "submitted": self.submitted,
            "by_channel": dict(sorted(Counter(k.split(":", 1)[0] for k in self.orders).items())),
            "intake_faults": dict(sorted(Counter(f for f in self.orders.values() if f).items())),
            "downstream_faults": dict(sorted(Counter(self.downstream.values()).items())),
            **{stage: self.reached(stage) for stage in STAGES},
            "failed": sum(1 for s in self.stages.values() if s == "failed"),
            "returns": len(self.returns), "credits": len(self.credits), "drained": self.drained,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2, default=str)


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


def split_cents(total: Decimal, parts: int) -> list[Decimal]:
    """Total split into `parts` amounts of whole cents that add up to it exactly (first takes the rest)."""
    cents = int(money(total) * 100)
    share, rest = divmod(cents, parts)
    return [Decimal(share + (rest if i == 0 else 0)) / 100 for i in range(parts)]


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


# ----------------------------------------------------------------------------- I/O


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


class Workload:
    """Plays the channels, the ERP and the WMS around the pipeline on the local stack.

    Keyword arguments go to ``Scenario``. Connects lazily with the ERP and WMS admin logins of
    ``settings``; use it as a context manager (or call ``close``). Step methods return how many
    orders they looked at.
    """

    def __init__(self, settings: Settings, seed: int, tag: str, *, start: datetime | None = None,
                 fault_rate: float = 0.15, downstream_fault_rate: float = 0.05, return_rate: float = 0.1,
                 import_failure_rate: float = 0.0, max_orders: int = 1000,
                 channels: Sequence[Channel] | None = None) -> None:
        self.settings = settings
        self.scenario = Scenario(seed, tag, start=start, fault_rate=fault_rate,
                                 downstream_fault_rate=downstream_fault_rate, return_rate=return_rate,
                                 import_failure_rate=import_failure_rate, max_orders=max_orders,
                                 channels=channels or configured_channels(settings))
        self.manifest = self.scenario.manifest
        self.tag = tag
        self._erp_conn: Any = None
        self._wms_conn: Any = None
        self._producer: Any = None
        self._delivery_errors: list[str] = []

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        for conn in (self._erp_conn, self._wms_conn):
            if conn is not None:
                conn.close()
        self._erp_conn = self._wms_conn = self._producer = None

    def touch(self) -> None:
        """One source change now (an item's updated_at), so that event time moves on.

        SLA deadlines and intake TTLs that fell due while the sources were quiet then fire without
        waiting for business to resume.
        """
        self._erp().execute("UPDATE erp.items SET updated_at = now() WHERE sku = %s",
                            (self.scenario.catalog.items[0].sku,))

    # -- connections

    def _erp(self) -> Any:
        if self._erp_conn is None:
            import psycopg  # noqa: PLC0415 - the pure Scenario must not need database drivers

            e = self.settings.erp
            self._erp_conn = psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                                             password=e.password.get_secret_value(), autocommit=True)
            self._erp_conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {ID_SEQUENCE} START WITH {ID_START}")
        return self._erp_conn

    def _wms(self) -> Any:
        if self._wms_conn is None:
            import pymysql  # noqa: PLC0415

            w = self.settings.wms
            self._wms_conn = pymysql.connect(host=w.host, port=w.port, user=w.user,
                                             password=w.password.get_secret_value(), database=w.dbname,
                                             autocommit=False)
        return self._wms_conn

    @contextmanager
    def _wms_tx(self) -> Iterator[Any]:
        """A WMS cursor inside one transaction: committed on success, rolled back on any error."""
        conn = self._wms()
        conn.begin()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _next_id(self) -> int:
        row = self._erp().execute(f"SELECT nextval('{ID_SEQUENCE}')").fetchone()
        return int(row[0])

    def _like(self) -> str:
        return f"{self.tag}-%"  # the tag is letters and digits only: no LIKE wildcards inside

    def _advance(self, key: str, stage: str) -> None:
        current = self.manifest.stages.get(key)
        if current is None or (current in STAGES and STAGES.index(stage) > STAGES.index(current)):
            self.manifest.stages[key] = stage

    # -- 1. master data and stock

    def seed(self) -> None:
        """Insert the catalog: customers, items, price lists (ERP) and stock (WMS). Idempotent."""
        cat = self.scenario.catalog
        erp = self._erp()
        with erp.transaction(), erp.cursor() as cur:
            cur.executemany(
                "INSERT INTO erp.items (sku, description, safety_stock, status) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(i.sku, i.description, i.safety_stock, i.status) for i in cat.items])
            cur.executemany(
                "INSERT INTO erp.customers (customer_id, account_no, name, price_list_id, credit_limit,"
                " credit_hold, tax_jurisdiction) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(c.customer_id, c.account_no, c.name, c.price_list_id, c.credit_limit, c.credit_hold,
                  c.tax_jurisdiction) for c in cat.customers])
            cur.executemany(
                "INSERT INTO erp.price_list_lines (price_list_id, sku, unit_price, valid_from, valid_to)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(p.price_list_id, p.sku, p.unit_price, p.valid_from, p.valid_to) for p in cat.prices])
        with self._wms_tx() as cur:
            cur.executemany(
                "INSERT IGNORE INTO inventory_balances (sku, location, on_hand, allocated, in_transit, updated_at)"
                " VALUES (%s, %s, %s, 0, %s, UTC_TIMESTAMP(6))",
                [(s.sku, s.location, s.on_hand, s.in_transit) for s in cat.stock])
        log.info("seeded %d customers, %d items, %d price lines, %d stock rows (tag %s)", len(cat.customers),
                 len(cat.items), len(cat.prices), len(cat.stock), self.tag)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the pipeline has read the seeded catalog; False after timeout_s.

        Redis ``ats:<channel>`` has every seeded SKU on every channel (items and stock read), and
        canonical records exist for every seeded customer and price line: intake validates the
        first orders against them. On a busy machine Debezium can deliver the price lines seconds
        after the items, and an order validated before its prices is rejected as a price mismatch.
        """
        import redis  # noqa: PLC0415

        from connectors.redis import client as redis_client  # noqa: PLC0415

        store = redis_client(self.settings, reader=True)
        skus = [i.sku for i in self.scenario.catalog.items]
        deadline = time.monotonic() + timeout_s
        try:
            while not all(None not in store.hmget(f"ats:{c.id}", skus) for c in self.scenario.channels):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.5)
        except redis.RedisError as exc:
            log.warning("cannot read Redis to see whether the pipeline is ready: %s", exc)
            return False
        finally:
            store.close()
        return self._wait_catalog_published(deadline)

    def _wait_catalog_published(self, deadline: float) -> bool:
        """Canonical records for every seeded customer and (price list, SKU), before the deadline."""
        from erpsync.topics import Follower  # noqa: PLC0415 - the pure Scenario must not need Kafka

        cat = self.scenario.catalog
        waiting: set[tuple[str, tuple[str, ...]]] = {("canonical.customer", (c.customer_id,)) for c in cat.customers}
        waiting |= {
            ("canonical.price", (p.price_list_id, p.sku)) for p in cat.prices}
        since_ms = int(time.time() * 1000) - 3_600_000
        with Follower(self.settings, ["canonical.customer", "canonical.price"], since_ms=since_ms,
                      group=f"erpsync-simulate-{self.tag}") as reader:
            while waiting and time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None or self.tag not in (key := (msg.key() or b"").decode()):
                    continue
                try:
                    values = set(json.loads(key))
                except (ValueError, TypeError):
                    continue
                waiting = {(topic, want) for topic, want in waiting
                           if topic != msg.topic() or not values.issuperset(want)}
        if waiting:
            log.warning("the pipeline has not published %d seeded customers/price lines", len(waiting))
        return not waiting

    # -- 2. channel orders

    def orders(self, n: int, rate: float | None = None, *,
               on_idle: Callable[[], None] | None = None, idle_every_s: float = 0.2) -> list[OrderPlan]:
        """Plan the next n orders and produce them (duplicates twice) to ``commerce.orders``.

        At most `rate` messages/s (None: as fast as possible); while waiting for its slot it calls
        on_idle every idle_every_s.
        """
        plans = self.scenario.plan_orders(n)
        self._produce(Scenario.submissions(plans), rate, on_idle, idle_every_s)
        return plans

    def _produce(self, submissions: Sequence[OrderPlan], rate: float | None,
                 on_idle: Callable[[], None] | None, idle_every_s: float) -> None:
        if self._producer is None:
            from confluent_kafka import Producer  # noqa: PLC0415

            self._producer = Producer(self.settings.kafka.client_config() | {
                                       "client.id": f"erpsync-simulate-{self.tag}", "enable.idempotence": True,
                                       "linger.ms": 5})
        producer = self._producer

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.manifest.submitted += 1
            else:
                self._delivery_errors.append(f"{msg.key()!r}: {err}")

        interval = 1.0 / rate if rate else 0.0
        next_at = last_idle = time.monotonic()
        for plan in submissions:
            # Token bucket of one token: each order waits for its slot, doing ERP/WMS work meanwhile.
            while (now := time.monotonic()) < next_at:
                if on_idle is not None and now - last_idle >= idle_every_s:
                    on_idle()
                    last_idle = time.monotonic()
                else:
                    time.sleep(min(next_at - now, idle_every_s))
            next_at = max(next_at, time.monotonic()) + interval
            producer.produce(ORDERS_TOPIC, key=plan.key.encode(),
                             value=json.dumps(plan.doc, separators=(",", ":")).encode(), on_delivery=delivered)
            producer.poll(0)
        # A storefront keeps its orders until Kafka has them (an outage is waited out, up to librdkafka's
        # message.timeout.ms), playing the ERP and the WMS meanwhile.
        deadline = time.monotonic() + 300
        while (left := producer.flush(1)) and time.monotonic() < deadline:
            if on_idle is not None:
                on_idle()
        if left or self._delivery_errors:
            raise RuntimeError(f"{left} orders not delivered to {ORDERS_TOPIC}; errors: {self._delivery_errors[:5]}")

    # -- 3. the ERP imports the intake

    def erp_import(self) -> int:
        """Import this run's pending ``erp.order_intake`` rows as sales orders (status 'entered').

        Lines are 'open'; the intake row becomes 'imported' with the ERP order id in the same
        transaction, or 'failed' with an error where the plan says so or the payload is not an order.
        """
        erp = self._erp()
        pending = erp.execute(
            "SELECT channel, external_order_id FROM erp.order_intake"
            " WHERE status = 'pending' AND external_order_id LIKE %s ORDER BY received_at, external_order_id",
            (self._like(),)).fetchall()
        for channel, external_id in pending:
            self._import_one(channel, external_id)
        return len(pending)

    def _import_one(self, channel: str, external_id: str) -> None:
        import psycopg  # noqa: PLC0415

        key = f"{channel}:{external_id}"
        plan = self.scenario.plans.get(key)
        erp = self._erp()
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
        erp = self._erp()
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
            (self._next_id(), channel, external_id, order.customer_id, order.currency, order.fulfillment_method,
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

    # -- 4. the WMS fulfils, the ERP follows

    def wms_step(self) -> int:
        """Move each of this run's ERP orders one WMS stage on; the ERP follows.

        'entered': allocate (ERP -> 'allocated'); 'allocated': pick, then ship (ERP -> lines and
        order 'shipped').
        """
        rows = self._erp().execute(
            "SELECT o.order_id, o.channel, o.external_order_id, o.status, o.freight_total, l.line_no, l.sku,"
            " l.qty FROM erp.sales_orders o JOIN erp.sales_order_lines l USING (order_id)"
            " WHERE o.external_order_id LIKE %s AND o.status IN ('entered', 'allocated') AND l.status = 'open'"
            " ORDER BY o.order_id, l.line_no", (self._like(),)).fetchall()
        orders: dict[int, _ErpOrder] = {}
        for order_id, channel, external_id, status, freight, line_no, sku, qty in rows:
            order = orders.setdefault(order_id, _ErpOrder(order_id, f"{channel}:{external_id}", status, freight))
            order.lines[line_no] = (sku, qty)
        if not orders:
            return 0
        allocations: dict[int, list[_Allocation]] = defaultdict(list)
        with self._wms_tx() as cur:
            cur.execute("SELECT allocation_id, order_id, line_no, sku, location, qty, status FROM allocations"
                        " WHERE order_id IN %s AND status <> 'cancelled'", (tuple(orders),))
            for row in cur.fetchall():
                allocations[row[1]].append(_Allocation(*row))
        for order in orders.values():
            mine = allocations.get(order.order_id, [])
            statuses = {a.status for a in mine}
            if order.status == "entered":
                if mine or self._allocate(order):
                    self._erp_status(order.order_id, "entered", "allocated")
            elif "allocated" in statuses:
                with self._wms_tx() as cur:
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
        with self._wms_tx() as cur:
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
        ids = [self._next_id() for _ in by_location]
        freights = split_cents(order.freight_total, len(by_location))
        carrier, tracking = (plan.carrier, plan.tracking_no) if plan else ("UPS", f"SIM{ids[0]}")
        with self._wms_tx() as cur:
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
        with self._wms_tx() as cur:
            cur.execute("SELECT l.line_no, SUM(l.qty) FROM shipment_lines l JOIN shipments s USING (shipment_id)"
                        " WHERE s.order_id = %s AND s.status IN ('dispatched', 'delivered') GROUP BY l.line_no",
                        (order.order_id,))
            shipped = {int(no): int(qty) for no, qty in cur.fetchall()}
        full = [no for no, (_, qty) in order.lines.items() if shipped.get(no, 0) >= qty]
        erp = self._erp()
        with erp.transaction():
            if full:
                erp.execute("UPDATE erp.sales_order_lines SET status = 'shipped' WHERE order_id = %s"
                            " AND line_no = ANY(%s) AND status = 'open'", (order.order_id, full))
            self._erp_status(order.order_id, "allocated", "shipped")

    def _erp_status(self, order_id: int, old: str, new: str) -> None:
        self._erp().execute("UPDATE erp.sales_orders SET status = %s, updated_at = now()"
                            " WHERE order_id = %s AND status = %s", (new, order_id, old))

    # -- 5. finance

    def erp_finance(self) -> int:
        """Invoice shipped orders, credit earlier returns, receive planned returns of invoiced orders.

        A credit memo comes at least one step after its return, as in a real back office.
        """
        return self._invoice() + self._credit() + self._receive_returns()

    def _invoice(self) -> int:
        erp = self._erp()
        shipped = erp.execute(
            "SELECT order_id, channel, external_order_id, order_total, tax_total FROM erp.sales_orders"
            " WHERE external_order_id LIKE %s AND status = 'shipped' ORDER BY order_id", (self._like(),)).fetchall()
        if not shipped:
            return 0
        with self._wms_tx() as cur:
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
                total = order_total + plan.delta if order_total + plan.delta > 0 else order_total + abs(plan.delta)
            elif plan is not None and kind == "freight_discrepancy":
                freight_total = freight_total + abs(plan.delta)  # a carrier surcharge billed, not in the WMS
            with erp.transaction():
                posted = erp.execute(
                    "INSERT INTO erp.invoices (invoice_id, order_id, invoice_total, tax_total, freight_total)"
                    " SELECT %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM erp.invoices WHERE order_id = %s)",
                    (self._next_id(), order_id, total, tax_total, freight_total, order_id)).rowcount
                self._erp_status(order_id, "shipped", "invoiced")
            if posted and kind in ("invoice_discrepancy", "freight_discrepancy"):
                self.manifest.downstream[key] = str(kind)
                self.manifest.details[key] = {"order_total": str(order_total), "invoice_total": str(total),
                                              "shipments_freight": str(freight.get(order_id, Decimal("0.00"))),
                                              "invoice_freight": str(freight_total)}
        return len(shipped)

    def _rma_id(self, plan: OrderPlan) -> str:
        return f"RMA-{self.tag}-{plan.index:06d}"

    def _receive_returns(self) -> int:
        due = {p.doc["external_order_id"]: p for p in self.scenario.plans.values()
               if p.return_plan is not None and p.key not in self.manifest.returns}
        if not due:
            return 0
        erp = self._erp()
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
            with self._wms_tx() as cur:
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
        erp = self._erp()
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
                amount = expected + plan.delta if expected + plan.delta > 0 else expected + abs(plan.delta)
                self.manifest.downstream[plan.key] = "credit_discrepancy"
                self.manifest.details[plan.key] = {"rma_id": rma_id, "expected": str(expected),
                                                   "credited": str(amount)}
            credit_id = self._next_id()
            erp.execute("INSERT INTO erp.credit_memos (credit_memo_id, order_id, rma_id, amount, reason)"
                        " VALUES (%s, %s, %s, %s, %s)", (credit_id, order_id, rma_id, amount,
                                                         f"return ({ret.disposition})"))
            self.manifest.credits[plan.key] = credit_id
        return len(due)

    # -- 6. the whole run

    def observe(self) -> None:
        """Bring the manifest's stages and ERP order ids up to date with the ERP."""
        rows = self._erp().execute(
            "SELECT i.channel, i.external_order_id, i.status, o.order_id, o.status FROM erp.order_intake i"
            " LEFT JOIN erp.sales_orders o USING (channel, external_order_id)"
            " WHERE i.external_order_id LIKE %s", (self._like(),)).fetchall()
        for channel, external_id, intake_status, order_id, status in rows:
            key = f"{channel}:{external_id}"
            if intake_status == "failed":
                self.manifest.stages[key] = "failed"
            elif order_id is not None:
                self.manifest.erp_order_ids[key] = order_id
                self._advance(key, _STAGE_OF_STATUS.get(status, "imported"))

    def step(self) -> None:
        """One round of the ERP and the WMS: invoice/return/credit, fulfil, import; then observe.

        Latest stage first, so an order moves on at most one stage a round, as in a real ERP and
        WMS where import, allocation and shipping are separate moments (and channels see each).
        """
        self.erp_finance()
        self.wms_step()
        self.erp_import()
        self.observe()

    def finished(self, key: str) -> bool:
        """Whether the workload has nothing left to do for an order."""
        stage = self.manifest.stages.get(key)
        if stage != "invoiced":
            return stage == "failed"
        plan = self.scenario.plans.get(key)
        if plan is None or plan.return_plan is None:
            return True
        return key in self.manifest.credits or (key in self.manifest.returns and plan.downstream == "credit_pending")

    def drained(self) -> bool:
        """Every order expected to be accepted, and every order that reached the ERP, is finished."""
        keys = set(self.manifest.expected_accepted()) | set(self.manifest.stages)
        return all(self.finished(k) for k in keys)

    def run(self, orders: int, rate: float | None = 10.0, *, until_drained: bool = True, timeout_s: float = 300.0,
            poll_s: float = 0.2, ready_timeout_s: float = 30.0,
            on_step: Callable[[], None] | None = None) -> Manifest:
        """Seed, send `orders` orders at `rate`/s while playing the ERP and the WMS, return the manifest.

        After the last order it keeps playing them every poll_s until every order is finished
        (``manifest.drained``) or timeout_s has passed. on_step (progress) is called after every
        round of the ERP and the WMS.
        """
        def step() -> None:
            self.step()
            if on_step is not None:
                on_step()

        self.seed()
        if not self.wait_ready(ready_timeout_s):
            log.warning("the pipeline shows no availability for the seeded SKUs after %.0fs; sending anyway",
                        ready_timeout_s)
        self.orders(orders, rate, on_idle=step, idle_every_s=poll_s)
        log.info("sent %d orders (%d messages)", len(self.manifest.orders), self.manifest.submitted)
        deadline = time.monotonic() + timeout_s
        last_log = 0.0
        while until_drained:
            step()
            self.manifest.drained = self.drained()
            if self.manifest.drained or time.monotonic() >= deadline:
                break
            if time.monotonic() - last_log >= 5:
                log.info("progress: %s", {s: self.manifest.reached(s) for s in STAGES})
                last_log = time.monotonic()
            time.sleep(poll_s)
        return self.manifest
