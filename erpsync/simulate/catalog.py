"""The master data and stock one run seeds into the ERP and the WMS, decided by the run's generator.

Customers (some on credit hold, some without a tax jurisdiction), items (some discontinued), price
lists and stock at every reference location. Pure: ``seeding`` writes it, the planned orders
(``scenario``) buy from it, both from this one description.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from state.channels import Channel

LOCATIONS = ("DC-EAST", "DC-WEST", "DC-CENTRAL")
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
PRICE_SCALE = Decimal("0.0001")


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
