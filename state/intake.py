"""Order intake governance (spec section 6): every rule a small pure function, and the intake desk.

``validate`` runs the rules and returns every failing reason code, so a rejected channel order
says everything that is wrong with it at once. What the rules look up (customers, items, price
lists, availability) comes in as a ``Catalog`` built from canonical events; nothing here reads a
clock or a database.

``IntakeDesk`` is the reducer the orders flow runs under one key: it keeps the catalog, each SKU's
network availability before reservations (``NetworkChange`` from ``SkuNetwork``) and the pending
reservations of the orders it accepted, so "ATS at validation, counting earlier accepted orders"
is exact: ``max(0, floor((network − reserved) × share))``, the ledger's own formula.

An order is validated against the sources as of its own time: the desk holds it until the event
time of every input stream (``Tick``s from canonical events, per raw topic partition: one table's
changes, which Kafka delivers in order) has reached the order's Kafka timestamp. Catching up on a
backlog (where one table's topic may lag another's), or replaying a dump, then decides each order
on the same state as a pipeline that kept up would have. An idle table sends no ticks: live, the
flow tells ``release`` which streams have been quiet for a short wall-clock wait; in replay (no
wall clock) a stream counts as quiet once another stream's event time is `quiet_ms` past the
order; at the end of input everything waiting is decided.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from state import Tick, exception
from state.ats import (
    ITEM_TOPIC,
    ORDER_INTAKE_TOPIC,
    ORDER_TOPIC,
    IntakeAccepted,
    NetworkChange,
    PendingIntakes,
    Reservation,
    Reservations,
)
from state.channels import Channel
from state.order_status import IntakeDecision
from state.records import DeadLetter, Emit, Ignored, RawRecord

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
            and "unit_price" in line and _small_positive_int(line.get("line_no")) for line in lines):
        return None
    if len({line["line_no"] for line in lines}) != len(lines):
        return None  # two lines with one number: they could not be told apart (reservations, ERP lines)
    if b"\\u0000" in raw and _has_nul(doc):  # (JSON carries NUL only escaped: look closer only then)
        return None  # no text column of the ERP, the ops database or PostgreSQL JSON can hold it
    for money in MONEY_FIELDS:
        if money in doc and not _decimal_string(doc[money]):
            return None
    if "tax_jurisdiction" in doc and doc["tax_jurisdiction"] is not None \
            and not isinstance(doc["tax_jurisdiction"], str):
        return None
    try:
        placed = datetime.fromisoformat(doc["placed_at"])
    except ValueError:
        return None
    if placed.tzinfo is None:
        return None
    return Order(doc, placed.date())


MONEY_FIELDS = ("freight_total", "discount_total", "tax_total")
MAX_INT = 2**31 - 1  # quantities and line numbers are Avro ints downstream


def _small_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _decimal_string(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


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
    return qty if _small_positive_int(qty) else None


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
        if not price.is_finite():
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


# ----------------------------------------------------------------------------- the intake desk

ACCEPTED_ORDER_SCHEMA = "io.erpsync.AcceptedOrder"
ORDER_INTAKE_OUT_TOPIC = "erp.order-intake"
CUSTOMER_TOPIC = "canonical.customer"
PRICE_TOPIC = "canonical.price"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
REASON_TEXT = {
    "unknown_customer": "the customer is not in the ERP",
    "credit_hold": "the customer is on credit hold",
    "payment_not_approved": "payment is neither approved nor terms the channel allows",
    "missing_tax_jurisdiction": "no tax jurisdiction on the order or the customer",
    "invalid_fulfillment_method": "fulfillment method is not SHIP, PICKUP or DROPSHIP",
    "unknown_sku": "a line's SKU is not in the item master",
    "inactive_sku": "a line's SKU is discontinued",
    "price_mismatch": "a line's unit price differs from the customer's price list beyond the channel tolerance",
    "invalid_quantity": "a line's quantity is not a positive integer",
    "insufficient_stock": "a line's quantity exceeds the channel's available-to-sell",
    "malformed": "the order is not of the channel order shape",
}

DeskInput = RawRecord | Emit | NetworkChange | Tick
DeskOutput = Emit | Reservation | IntakeDecision | DeadLetter | Ignored


@dataclass(slots=True)
class DeskState:
    """Everything intake validation looks at, plus the orders it accepted."""

    catalog: Catalog = field(default_factory=Catalog)
    fences: dict[str, str] = field(default_factory=dict)  # catalog row -> applied source position
    price_rows: dict[tuple[str, str], dict[int, PriceLine]] = field(default_factory=dict)  # valid_from day
    network: dict[str, tuple[int, str, tuple[int, ...]]] = field(default_factory=dict)  # version, status, per ch.
    pending: PendingIntakes = field(default_factory=PendingIntakes)
    held: dict[str, tuple[str, int]] = field(default_factory=dict)  # reservation line key -> (sku, qty)
    reserved: dict[str, int] = field(default_factory=dict)  # sku -> reserved by pending intakes
    accepted: set[str] = field(default_factory=set)  # "<channel>/<ext id>" accepted once: never again
    sequence: int = 0  # accepted orders so far: the "commerce" position of what they cause
    waiting: list[RawRecord] = field(default_factory=list)  # orders ahead of source event time, in arrival order
    watermarks: dict[str, int] = field(default_factory=dict)  # input stream -> newest event time (tick slots)

    def copy(self) -> DeskState:
        """A snapshot copy (containers copied, immutable values shared)."""
        pending = self.pending.copy()
        catalog = Catalog(dict(self.catalog.customers), dict(self.catalog.items), dict(self.catalog.prices))
        return DeskState(catalog, dict(self.fences), {k: dict(v) for k, v in self.price_rows.items()},
                         dict(self.network), pending, dict(self.held), dict(self.reserved), set(self.accepted),
                         self.sequence, list(self.waiting), dict(self.watermarks))


class IntakeDesk:
    """Reducer for intake governance, under one key (see the module doc)."""

    def __init__(self, channels: Sequence[Channel], tick_ms: int = 100, quiet_ms: int | None = None,
                 tolerance_ms: int = 1000) -> None:
        self.tick_ms = tick_ms  # resolution of the ticks the flow sends
        # How far a source's event time may trail an order's and still count as reached: MariaDB's
        # binlog stamps changes in whole seconds, and clocks differ a little between systems.
        self.tolerance_ms = tolerance_ms
        self.quiet_ms = quiet_ms  # replay: a stream is quiet once another is this far past the order
        self.channels = {c.id: c for c in channels}
        self.index = {c.id: i for i, c in enumerate(channels)}
        self.shares = {c.id: (c.share_exact.numerator, c.share_exact.denominator) for c in channels}
        self.reservations = Reservations(channels)

    def apply(self, state: DeskState | None, event: DeskInput) -> tuple[DeskState, list[DeskOutput]]:
        st = state or DeskState()
        out: list[DeskOutput] = []
        if isinstance(event, RawRecord):
            if st.waiting or not st.watermarks or not self._due(st, event):
                st.waiting.append(event)
            else:
                out.extend(self._order(st, event))
        elif isinstance(event, NetworkChange):
            old = st.network.get(event.sku)
            if old is None or event.version > old[0]:
                st.network[event.sku] = (event.version, event.status, event.networks)
        elif isinstance(event, Tick):
            if event.stream and event.event_ms > st.watermarks.get(event.stream, -1):
                st.watermarks[event.stream] = event.event_ms
            out.extend(self._reserve(st, event))
            if st.waiting:
                out.extend(self.release(st, frozenset()))
        elif event.topic in (ORDER_TOPIC, ORDER_INTAKE_TOPIC):
            out.extend(self._reserve(st, event))
        else:
            self._catalog(st, event)
        return st, out

    def release(self, st: DeskState, quiet: frozenset[str] | None = None) -> list[DeskOutput]:
        """Validate the waiting orders that are due, counting `quiet` streams as caught up (None: all)."""
        out: list[DeskOutput] = []
        decided = 0
        for raw in st.waiting:  # first come, first decided: stop at the first order still ahead
            if quiet is not None and not self._due(st, raw, quiet):
                break
            out.extend(self._order(st, raw))
            decided += 1
        if decided:
            del st.waiting[:decided]
        return out

    def _due(self, st: DeskState, raw: RawRecord, quiet: frozenset[str] = frozenset()) -> bool:
        """Whether every input stream's event time has reached the order's time (within the tick resolution)."""
        slot = raw.timestamp_ms - raw.timestamp_ms % self.tick_ms - self.tolerance_ms
        newest = max(st.watermarks.values(), default=-1)
        replay_quiet = self.quiet_ms is not None and newest >= slot + self.quiet_ms
        return all(ms >= slot or stream in quiet or replay_quiet for stream, ms in st.watermarks.items())

    # -- catalog

    def _catalog(self, st: DeskState, event: Emit) -> None:
        v, position = event.value, event.value["source"]["position"]
        deleted = v["op"] == "delete"
        cat = st.catalog
        if event.topic == CUSTOMER_TOPIC:
            row = f"c|{v['customer_id']}"
        elif event.topic == ITEM_TOPIC:
            row = f"i|{v['sku']}"
        elif event.topic == PRICE_TOPIC:
            row = f"p|{v['price_list_id']}|{v['sku']}|{v['valid_from']}"
        else:
            return
        old = st.fences.get(row)
        if old is not None and position <= old:
            return
        st.fences[row] = position
        if event.topic == CUSTOMER_TOPIC:
            if deleted:
                cat.customers.pop(v["customer_id"], None)
            else:
                cat.customers[v["customer_id"]] = Customer(
                    v["customer_id"], v["price_list_id"], bool(v["credit_hold"]), v["tax_jurisdiction"] or None)
        elif event.topic == ITEM_TOPIC:
            if deleted:
                cat.items.pop(v["sku"], None)
            else:
                cat.items[v["sku"]] = v["status"]
        else:
            key = (v["price_list_id"], v["sku"])
            rows = st.price_rows.setdefault(key, {})
            if deleted:
                rows.pop(v["valid_from"], None)
            else:
                rows[v["valid_from"]] = PriceLine(
                    Decimal(v["unit_price"]), _day(v["valid_from"]),
                    None if v["valid_to"] is None else _day(v["valid_to"]))
            if rows:
                cat.prices[key] = list(rows.values())
            else:
                cat.prices.pop(key, None)
                del st.price_rows[key]

    # -- channel orders

    def ats(self, st: DeskState, channel: Channel, sku: str) -> int:
        """The channel's ATS for sku now, counting the reservations of earlier accepted orders."""
        known = st.network.get(sku)
        if known is None or known[1] != "active" or st.catalog.items.get(sku, "absent") != "active":
            return 0
        numerator, denominator = self.shares[channel.id]
        network = known[2][self.index[channel.id]] - st.reserved.get(sku, 0)
        return max(0, network * numerator // denominator)

    def _order(self, st: DeskState, raw: RawRecord) -> list[DeskOutput]:
        event_ms = raw.timestamp_ms or st.pending.now_ms
        order = None if raw.value is None else parse(raw.value)
        channel_id, ext_id = _ids(order, raw.key)
        channel = self.channels.get(channel_id or "")
        if channel is None or not ext_id or "\x00" in ext_id:
            why = "not a channel order (unparseable, or no channel and order id)" if order is None \
                else f"unknown channel {channel_id!r}"
            return [DeadLetter(raw, why, "orders-intake")]
        key = f"{channel.id}/{ext_id}"
        if key in st.accepted:
            return [Ignored("duplicate submission of an accepted order", raw.topic, raw.partition, raw.offset)]
        out: list[DeskOutput] = []
        if order is None:
            reasons = ["malformed"]
            if not _is_json_object(raw.value):
                out.append(DeadLetter(raw, "malformed channel order: not a JSON object", "orders-intake"))
        else:
            st.catalog.ats = {(channel.id, line["sku"]): self.ats(st, channel, line["sku"]) for line in order.lines}
            reasons = validate(order, channel, st.catalog)
        out.append(IntakeDecision(channel.id, ext_id, tuple(reasons), event_ms))
        if reasons:
            detail = {"kafka": f"{raw.topic}/{raw.partition}/{raw.offset}", "reasons": reasons}
            out.extend(exception(r, "warning", "channel_order", key, REASON_TEXT[r], detail, event_ms)
                       for r in reasons)
            return out
        assert order is not None
        st.accepted.add(key)
        st.sequence += 1
        accepted = self._accepted_order(order, st, event_ms)
        out.append(Emit(ORDER_INTAKE_OUT_TOPIC, f"{channel.id}:{ext_id}", ACCEPTED_ORDER_SCHEMA, accepted))
        out.extend(self._reserve(st, IntakeAccepted(accepted, f"{st.sequence:016d}", event_ms)))
        return out

    def _accepted_order(self, order: Order, st: DeskState, event_ms: int) -> dict[str, Any]:
        doc = order.doc
        customer = st.catalog.customers[doc["customer_id"]]
        placed = datetime.fromisoformat(doc["placed_at"])
        return {
            "channel": doc["channel"], "external_order_id": doc["external_order_id"],
            "customer_id": doc["customer_id"], "payment_status": doc["payment_status"],
            "tax_jurisdiction": doc.get("tax_jurisdiction") or customer.tax_jurisdiction,
            "fulfillment_method": doc["fulfillment_method"], "currency": doc["currency"],
            "placed_at": (placed - _EPOCH) // timedelta(microseconds=1),
            **{money: doc.get(money) or "0" for money in MONEY_FIELDS},
            "lines": [{"line_no": line["line_no"], "sku": line["sku"], "qty": line["qty"],
                       "unit_price": str(line["unit_price"])} for line in order.lines],
            "accepted_at_ms": event_ms,
        }

    # -- reservations

    def _reserve(self, st: DeskState, event: IntakeAccepted | Emit | Tick) -> list[DeskOutput]:
        st.pending, outs = self.reservations.apply(st.pending, event)
        for r in outs:
            if isinstance(r, Reservation):
                old_sku, old_qty = st.held.pop(r.key, (r.sku, 0))
                st.reserved[old_sku] = st.reserved.get(old_sku, 0) - old_qty
                if not st.reserved[old_sku]:
                    del st.reserved[old_sku]
                if r.qty:
                    st.held[r.key] = (r.sku, r.qty)
                    st.reserved[r.sku] = st.reserved.get(r.sku, 0) + r.qty
        return list(outs)


def _day(days: int) -> date:
    return _EPOCH_DAY + timedelta(days=days)


def _ids(order: Order | None, key: bytes | None) -> tuple[str | None, str | None]:
    """(channel, external order id): from the order, else from the Kafka key "<channel>:<id>"."""
    if order is not None:
        return order.doc["channel"], order.doc["external_order_id"]
    try:
        channel, _, ext_id = (key or b"").decode().partition(":")
    except UnicodeDecodeError:
        return None, None
    return channel or None, ext_id or None


def _is_json_object(value: bytes | None) -> bool:
    try:
        return isinstance(json.loads(value or b""), dict)
    except (UnicodeDecodeError, ValueError):
        return False
