"""Order intake governance (spec section 6): every rule a small pure function.

``validate`` runs them all and returns every failing reason code, so a rejected channel order
says everything that is wrong with it at once. What the rules look up (customers, items, price
lists, availability) comes in as a ``Catalog`` built from canonical events; nothing here reads a
clock or a database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from erpsync.channels import Channel

FULFILLMENT_METHODS = frozenset({"SHIP", "PICKUP", "DROPSHIP"})
REQUIRED_FIELDS = ("channel", "external_order_id", "customer_id", "payment_status", "fulfillment_method",
                   "currency", "placed_at", "lines")


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    price_list_id: str
    credit_hold: bool
    tax_jurisdiction: str | None


@dataclass(frozen=True, slots=True)
class PriceLine:
    unit_price: Decimal
    valid_from: date
    valid_to: date | None

    def valid_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@dataclass
class Catalog:
    """What intake rules look up, as the canonical events last described it."""

    customers: dict[str, Customer] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)  # sku -> status ("active", "discontinued")
    prices: dict[tuple[str, str], list[PriceLine]] = field(default_factory=dict)  # (price list, sku)
    ats: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, sku) -> ATS at validation


@dataclass(frozen=True, slots=True)
class Order:
    """A channel order that parsed into the expected shape."""

    doc: dict[str, Any]
    placed_on: date

    @property
    def lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.doc["lines"]
        return lines


def parse(raw: bytes) -> Order | None:
    """The order, or None when it is not parseable or not of the order's shape (``malformed``)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or any(k not in doc for k in REQUIRED_FIELDS):
        return None
    if not all(isinstance(doc[k], str) for k in REQUIRED_FIELDS if k != "lines"):
        return None
    lines = doc["lines"]
    if not isinstance(lines, list) or not lines or not all(
            isinstance(line, dict) and isinstance(line.get("sku"), str) and "qty" in line
            and "unit_price" in line and isinstance(line.get("line_no"), int) for line in lines):
        return None
    try:
        placed = datetime.fromisoformat(doc["placed_at"])
    except ValueError:
        return None
    if placed.tzinfo is None:
        return None
    return Order(doc, placed.date())


Rule = Callable[[Order, Channel, Catalog], bool]  # True when the order passes


def _customer(order: Order, catalog: Catalog) -> Customer | None:
    return catalog.customers.get(order.doc["customer_id"])


def known_customer(order: Order, channel: Channel, catalog: Catalog) -> bool:
    return _customer(order, catalog) is not None


def not_on_credit_hold(order: Order, channel: Channel, catalog: Catalog) -> bool:
    customer = _customer(order, catalog)
    return customer is None or not customer.credit_hold


def payment_approved(order: Order, channel: Channel, catalog: Catalog) -> bool:
    status = order.doc["payment_status"]
    return status == "approved" or (status == "terms" and channel.intake.allow_terms)


def has_tax_jurisdiction(order: Order, channel: Channel, catalog: Catalog) -> bool:
    if order.doc.get("tax_jurisdiction"):
        return True
    customer = _customer(order, catalog)
    return bool(customer and customer.tax_jurisdiction)


def valid_fulfillment_method(order: Order, channel: Channel, catalog: Catalog) -> bool:
    return order.doc["fulfillment_method"] in FULFILLMENT_METHODS


def known_skus(order: Order, channel: Channel, catalog: Catalog) -> bool:
    return all(line["sku"] in catalog.items for line in order.lines)


def active_skus(order: Order, channel: Channel, catalog: Catalog) -> bool:
    return all(catalog.items.get(line["sku"], "active") == "active" for line in order.lines)


def _quantity(line: Mapping[str, Any]) -> int | None:
    qty = line["qty"]
    return qty if isinstance(qty, int) and not isinstance(qty, bool) and qty > 0 else None


def valid_quantities(order: Order, channel: Channel, catalog: Catalog) -> bool:
    return all(_quantity(line) is not None for line in order.lines)


def prices_match(order: Order, channel: Channel, catalog: Catalog) -> bool:
    customer = _customer(order, catalog)
    if customer is None:
        return True  # unknown_customer already says why; no price list to compare with
    tolerance = channel.intake.price_tolerance
    for line in order.lines:
        try:
            price = Decimal(str(line["unit_price"]))
        except InvalidOperation:
            return False
        lines = catalog.prices.get((customer.price_list_id, line["sku"]), ())
        valid = [p for p in lines if p.valid_on(order.placed_on)]
        if not valid:
            return False
        current = max(valid, key=lambda p: p.valid_from)  # the most specific line for that day
        if abs(price - current.unit_price) > tolerance:
            return False
    return True


def stock_available(order: Order, channel: Channel, catalog: Catalog) -> bool:
    if channel.intake.allow_backorder:
        return True
    wanted: dict[str, int] = {}
    for line in order.lines:
        qty = _quantity(line)
        if qty is not None:
            wanted[line["sku"]] = wanted.get(line["sku"], 0) + qty
    return all(qty <= catalog.ats.get((channel.id, sku), 0) for sku, qty in wanted.items())


RULES: Sequence[tuple[str, Rule]] = (
    ("unknown_customer", known_customer),
    ("credit_hold", not_on_credit_hold),
    ("payment_not_approved", payment_approved),
    ("missing_tax_jurisdiction", has_tax_jurisdiction),
    ("invalid_fulfillment_method", valid_fulfillment_method),
    ("unknown_sku", known_skus),
    ("inactive_sku", active_skus),
    ("price_mismatch", prices_match),
    ("invalid_quantity", valid_quantities),
    ("insufficient_stock", stock_available),
)


def validate(order: Order, channel: Channel, catalog: Catalog) -> list[str]:
    """Every failing reason code, in the spec's order; empty means accepted."""
    return [reason for reason, rule in RULES if not rule(order, channel, catalog)]
