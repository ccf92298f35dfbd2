"""Order intake governance (spec section 6): every rule a small pure function, and the reducers that decide.

``validate`` runs the rules and returns every failing reason code, so a rejected channel order
says everything that is wrong with it at once. What the rules look up (the customer, each SKU's
status, price and availability) comes in as a ``Catalog`` gathered for that order, as of its time.

The decision is spread over keyed steps, all in event-time order (``flows.sequencing``):

- ``IntakeEntry`` (key: "<channel>/<external order id>"): a channel order is checked against what
  the ERP already holds for that key (its ``erp.order_intake`` row: a re-submission of an accepted
  order is idempotent, and one whose content differs raises ``resubmission_conflict``), then fanned
  out: a ``LineCheck`` per line to the SKU's network step, a ``CustomerCheck`` to the customer's
  step, and the order itself to the arbiter. It also turns an intake the ERP marked ``failed`` into
  an ``intake_failed`` exception and a rejection.
- ``CustomerBook`` (key: customer id) answers with the customer as of the order's time.
- ``Arbiter`` (one key): gathers the answers and decides. Intake verdicts must count the
  reservations of every order accepted before, whatever SKUs they share; a dataflow cannot feed a
  verdict back to the steps that hold stock, so this one step holds the *pending* reservations
  (accepted, not yet imported by the ERP) and decides orders one after another, in event-time
  order. Its state is bounded by what is in flight: an order leaves it when the ERP imports it, marks
  it failed, or its TTL passes (``intake_unconfirmed``).

Idempotence lives where the ERP enforces it: the intake table's key. The entry learns the table's
rows through CDC; until its row arrives, the arbiter knows the order as pending.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from state import exception
from state.availability import ORDER_INTAKE_TOPIC, ORDER_TOPIC, LineAnswer, LineCheck, Reservation
from state.changes import MAX_JSON_DEPTH, json_depth_ok
from state.channels import Channel
from state.records import DeadLetter, Emit, Ignored, RawRecord, pickled_by_position
from state.sequencer import Wake

FULFILLMENT_METHODS = frozenset({"SHIP", "PICKUP", "DROPSHIP"})
REQUIRED_FIELDS = ("channel", "external_order_id", "customer_id", "payment_status", "fulfillment_method",
                   "currency", "placed_at", "lines")
MONEY_FIELDS = ("freight_total", "discount_total", "tax_total")
MONEY_SCALE, PRICE_SCALE = 2, 4  # the ERP's numeric(14,2) totals and numeric(12,4) unit prices
MAX_INT = 2**31 - 1  # quantities and line numbers are Avro ints downstream
CUSTOMER_TOPIC = "canonical.customer"
ACCEPTED_ORDER_SCHEMA = "io.erpsync.AcceptedOrder"
ORDER_INTAKE_OUT_TOPIC = "erp.order-intake"
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


# ----------------------------------------------------------------------------- parsing


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Order:
    """A channel order that parsed into the expected shape, with its business date."""

    doc: dict[str, Any]
    placed_ms: int  # placed_at, UTC milliseconds
    day: int  # business date (days since the epoch) of placed_at, bounded by its arrival

    @property
    def lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.doc["lines"]
        return lines


class Malformed(ValueError):
    """Why a channel order is not of the order's shape (a one-line reason naming the field)."""


def _decimal(value: Any, name: str, scale: int) -> Decimal:
    """An exact decimal of at most `scale` places, from a JSON string or number (parsed as Decimal)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise Malformed(f"{name} is not a decimal number")
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise Malformed(f"{name} {value!r} is not a decimal number") from None
    if not d.is_finite():
        raise Malformed(f"{name} is not finite")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > scale and d != d.quantize(Decimal(1).scaleb(-scale)):
        raise Malformed(f"{name} {value} has more than {scale} decimal places")
    return d


def _small_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT


def _has_control(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_control(k) or _has_control(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_control(v) for v in value)
    return False


def parse(raw: bytes, arrival_ms: int = 0, zone: ZoneInfo | None = None) -> Order:
    """The order, or ``Malformed`` naming what is wrong. Numbers are read as exact decimals, never floats.

    The business date is placed_at's date in `zone` (UTC by default); a placed_at after the order's
    arrival counts as its arrival.
    """
    if not json_depth_ok(raw):
        raise Malformed(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        doc = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in doc]
    if missing:
        raise Malformed(f"missing {', '.join(missing)}")
    for k in REQUIRED_FIELDS:
        if k != "lines" and not isinstance(doc[k], str):
            raise Malformed(f"{k} is not a string")
    lines = doc["lines"]
    if not isinstance(lines, list) or not lines:
        raise Malformed("lines is not a non-empty list")
    for i, line in enumerate(lines):
        if not isinstance(line, dict) or not isinstance(line.get("sku"), str) or "qty" not in line \
                or "unit_price" not in line:
            raise Malformed(f"lines[{i}] needs sku, qty and unit_price")
        if not _small_positive_int(line.get("line_no")):
            raise Malformed(f"lines[{i}].line_no is not a positive integer")
        line["unit_price"] = _decimal(line["unit_price"], f"lines[{i}].unit_price", PRICE_SCALE)
    if len({line["line_no"] for line in lines}) != len(lines):
        raise Malformed("two lines share a line_no")
    if _has_control(doc):
        raise Malformed("a NUL character, which no ERP text column can hold")
    for money in MONEY_FIELDS:
        if doc.get(money) is not None:
            doc[money] = _decimal(doc[money], money, MONEY_SCALE)
    if doc.get("tax_jurisdiction") is not None and not isinstance(doc["tax_jurisdiction"], str):
        raise Malformed("tax_jurisdiction is not a string")
    try:
        placed = datetime.fromisoformat(doc["placed_at"])
    except ValueError:
        raise Malformed(f"placed_at {doc['placed_at']!r} is not an ISO-8601 time") from None
    if placed.tzinfo is None:
        raise Malformed("placed_at has no UTC offset")
    placed_ms = (placed - _EPOCH) // timedelta(milliseconds=1)
    if arrival_ms and placed_ms > arrival_ms:
        placed_ms = arrival_ms
    local = (_EPOCH + timedelta(milliseconds=placed_ms)).astimezone(zone or UTC)
    return Order(doc, placed_ms, (local.date() - _EPOCH_DAY).days)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# ----------------------------------------------------------------------------- the rules


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    price_list_id: str
    credit_hold: bool
    tax_jurisdiction: str | None


@dataclass
class Catalog:
    """What the rules look at for one order, as of its time."""

    customers: dict[str, Customer] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)  # sku -> status ("active", "discontinued")
    prices: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (price list, sku) -> price that day
    ats: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, sku) -> ATS at validation


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
        current = catalog.prices.get((customer.price_list_id, line["sku"]))
        if current is None or abs(line["unit_price"] - current) > tolerance:
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


# ----------------------------------------------------------------------------- messages between the steps


@pickled_by_position
@dataclass(frozen=True, slots=True)
class ChannelOrder:
    """A record of commerce.orders as read: parsed, or why not (`problem`), at its event time."""

    raw: RawRecord
    time: int  # its event time: its arrival (Kafka timestamp), never before an earlier record's
    channel: str
    external_order_id: str
    order: Order | None
    problem: str = ""

    @property
    def key(self) -> str:
        return f"{self.channel}/{self.external_order_id}"


@pickled_by_position
@dataclass(frozen=True, slots=True)
class CustomerCheck:
    order_key: str
    customer_id: str


@pickled_by_position
@dataclass(frozen=True, slots=True)
class CustomerAnswer:
    order_key: str
    customer: Customer | None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class ToDecide:
    """An order on its way to the arbiter, and how many answers will follow it."""

    key: str
    order: Order
    channel: str
    answers: int
    raw: RawRecord  # the channel order as read (its coordinates)


@pickled_by_position
@dataclass(frozen=True, slots=True)
class IntakeDecision:
    """Intake accepted (reasons empty) or rejected an order; the status step shows it."""

    channel: str
    external_order_id: str
    reasons: tuple[str, ...]
    event_ms: int


def read_channel_order(raw: RawRecord, time: int, channels: Mapping[str, Channel],
                       zone: ZoneInfo | None = None) -> list[Any]:
    """A commerce.orders record -> a ``ChannelOrder`` (DLQ when it names no channel order at all)."""
    order: Order | None = None
    problem = ""
    try:
        order = parse(raw.value or b"", time, zone)
    except Malformed as exc:
        problem = str(exc)
    if order is not None:
        channel, ext_id = order.doc["channel"], order.doc["external_order_id"]
    else:
        try:
            channel, _, ext_id = (raw.key or b"").decode().partition(":")
        except UnicodeDecodeError:
            channel, ext_id = "", ""
    if not channel or not ext_id or channel not in channels or _has_control(ext_id) or "/" in channel:
        why = f"unknown channel {channel!r}" if channel and ext_id else \
            "not a channel order (unparseable, and no channel and order id in the key)"
        return [DeadLetter(raw, why if not problem else f"{why}: {problem}", "orders-intake")]
    return [ChannelOrder(raw, time, channel, ext_id, order, problem)]


# ----------------------------------------------------------------------------- the entry, per channel order


def order_digest(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a re-submission must repeat to be the same order (as strings: exact, comparable)."""
    return {
        "customer_id": doc.get("customer_id"), "payment_status": doc.get("payment_status"),
        "fulfillment_method": doc.get("fulfillment_method"), "currency": doc.get("currency"),
        "tax_jurisdiction": doc.get("tax_jurisdiction") or None,
        **{m: None if doc.get(m) is None else str(Decimal(str(doc[m])).quantize(Decimal("0.01")))
           for m in MONEY_FIELDS},
        "lines": sorted((int(line["line_no"]), str(line["sku"]), int(line["qty"]),
                         str(Decimal(str(line["unit_price"])).quantize(Decimal("0.0001"))))
                        for line in doc.get("lines") or []),
    }


def differences(accepted: Mapping[str, Any], again: Mapping[str, Any]) -> list[str]:
    a, b = order_digest(accepted), order_digest(again)
    return [k for k in a if a[k] != b.get(k)]


@pickled_by_position
@dataclass(slots=True)
class EntryState:
    intake: str = ""  # the ERP's intake row: "", "pending", "imported" or "failed"
    accepted: dict[str, Any] | None = None  # the payload the ERP holds (what was accepted)
    error: str | None = None
    failure_reported: bool = False



class IntakeEntry:
    """Keyed by "<channel>/<external order id>": re-submissions, fan-out of checks, ERP intake failures."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = {c.id: c for c in channels}

    def apply(self, state: EntryState | None, key: str, item: Any, time: int) -> tuple[EntryState | None, list[Any]]:
        if isinstance(item, ChannelOrder):
            return self._order(state, key, item, time)
        if isinstance(item, Emit) and item.topic == ORDER_INTAKE_TOPIC:
            return self._intake_row(state or EntryState(), key, item, time)
        if isinstance(item, Emit) and item.topic == ORDER_TOPIC:
            v = item.value
            if v["op"] == "delete" or v.get("status") in ("closed", "cancelled"):
                return None, []  # the ERP is done with the order: forget it (documented limit)
        return state, []

    def _order(self, state: EntryState | None, key: str, co: ChannelOrder, time: int) -> tuple[Any, list[Any]]:
        raw = co.raw
        if state is not None and state.intake:
            out: list[Any] = [Ignored("duplicate submission of an accepted order", raw.topic, raw.partition,
                                      raw.offset)]
            if co.order is not None and state.accepted is not None:
                changed = differences(state.accepted, co.order.doc)
                if changed:
                    out.append(conflict(key, changed, raw, time))
            return state, out
        if co.order is None:
            detail = {"kafka": _coordinates(raw), "reasons": ["malformed"], "problem": co.problem}
            return state, [IntakeDecision(co.channel, co.external_order_id, ("malformed",), time),
                           exception("malformed", "warning", "channel_order", key,
                                     f"{REASON_TEXT['malformed']}: {co.problem}", detail, time)]
        order = co.order
        out = [LineCheck(key, line["line_no"], line["sku"], co.channel, order.day) for line in order.lines]
        out.append(CustomerCheck(key, order.doc["customer_id"]))
        out.append(ToDecide(key, order, co.channel, len(order.lines) + 1, raw))
        return state, out

    def _intake_row(self, st: EntryState, key: str, event: Emit, time: int) -> tuple[Any, list[Any]]:
        v = event.value
        if v["op"] == "delete":
            return None, []
        st.intake = v["status"] or "pending"
        if v.get("payload") is not None:
            try:
                st.accepted = json.loads(v["payload"], parse_float=Decimal)
            except ValueError:
                st.accepted = None
        st.error = v.get("error")
        if st.intake != "failed" or st.failure_reported:
            return st, []
        st.failure_reported = True
        channel, _, ext_id = key.partition("/")
        detail = {"error": st.error, "erp_order_id": v.get("erp_order_id")}
        return st, [IntakeDecision(channel, ext_id, ("intake_failed",), time),
                    exception("intake_failed", "error", "order_intake", key,
                              f"the ERP could not import the order: {st.error or 'no error text'}", detail, time,
                              source=event.value["source"])]

    def close(self, state: EntryState | None, key: str, time: int) -> tuple[EntryState | None, list[Any]]:
        return state, []



def conflict(key: str, changed: list[str], raw: RawRecord, time: int) -> Emit:
    return exception("resubmission_conflict", "warning", "channel_order", key,
                     "re-submitted with different " + ", ".join(changed) + "; the accepted order stands",
                     {"changed": changed, "kafka": _coordinates(raw)}, time)


def _coordinates(raw: RawRecord) -> str:
    return f"{raw.topic}/{raw.partition}/{raw.offset}"


# ----------------------------------------------------------------------------- customers


class CustomerBook:
    """Keyed by customer id: the customer row as of now -> answers to intake's ``CustomerCheck``."""

    def apply(self, state: Any, key: str, item: Any, time: int) -> tuple[Any, list[Any]]:
        if isinstance(item, CustomerCheck):
            return state, [CustomerAnswer(item.order_key, None if state is None else state[1])]
        if not isinstance(item, Emit) or item.topic != CUSTOMER_TOPIC:
            return state, []
        v = item.value
        position = v["source"]["position"]
        if state is not None and position <= state[0]:
            return state, []
        if v["op"] == "delete":
            return None, []
        return (position, Customer(v["customer_id"], v["price_list_id"], bool(v["credit_hold"]),
                                   v["tax_jurisdiction"] or None)), []

    def close(self, state: Any, key: str, time: int) -> tuple[Any, list[Any]]:
        return state, []



# ----------------------------------------------------------------------------- the arbiter


@pickled_by_position
@dataclass(slots=True)
class Gathering:
    order: ToDecide | None = None  # the answers may come first (they sort before it in its instant)
    customer: Customer | None = None
    lines: dict[int, LineAnswer] = field(default_factory=dict)
    answers: int = 0


@pickled_by_position
@dataclass(slots=True)
class ArbiterState:
    # accepted, not yet imported: key -> (accepted ms, ttl expiry ms, lines (line_no, sku, qty), digest doc)
    pending: dict[str, tuple[int, int, tuple[tuple[int, str, int], ...], dict[str, Any]]] = \
        field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)  # sku -> reserved by pending orders
    gathering: dict[str, Gathering] = field(default_factory=dict)  # orders of the current instant



ARBITER_KEY = "intake"


class Arbiter:
    """The one step that decides channel orders, counting the reservations of the orders accepted before."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = {c.id: c for c in channels}
        self.shares = {c.id: (c.share_exact.numerator, c.share_exact.denominator) for c in channels}

    def ttl_ms(self, channel: str) -> int:
        return self.channels[channel].intake.intake_ttl_s * 1000

    def apply(self, state: ArbiterState | None, key: str, item: Any,
              time: int) -> tuple[ArbiterState | None, list[Any]]:
        st = state or ArbiterState()
        out: list[Any] = []
        if isinstance(item, ToDecide):
            st.gathering.setdefault(item.key, Gathering()).order = item
        elif isinstance(item, CustomerAnswer):
            g = st.gathering.setdefault(item.order_key, Gathering())
            g.customer = item.customer
            g.answers += 1
        elif isinstance(item, LineAnswer):
            g = st.gathering.setdefault(item.order_key, Gathering())
            g.lines[item.line_no] = item
            g.answers += 1
        elif isinstance(item, Emit):
            out.extend(self._source(st, item, time))
        elif isinstance(item, Wake):
            out.extend(self._expire(st, time))
        return (st if st.pending or st.gathering else None), out

    def close(self, state: ArbiterState | None, key: str, time: int) -> tuple[ArbiterState | None, list[Any]]:
        if state is None or not state.gathering:
            return state, []
        st = state
        out: list[Any] = []
        ready = [(key, g) for key, g in st.gathering.items() if g.order is not None and g.answers >= g.order.answers]
        for key, g in ready:  # in arrival order: the sequencer released them in event-time order
            del st.gathering[key]
            out.extend(self._decide(st, g, time))
        return (st if st.pending or st.gathering else None), out

    def ats(self, st: ArbiterState, channel: str, answer: LineAnswer) -> int:
        """The channel's ATS for the line's SKU now, counting the reservations of earlier accepted orders."""
        if answer.status != "active":
            return 0
        numerator, denominator = self.shares[channel]
        return max(0, (answer.network - st.reserved.get(answer.sku, 0)) * numerator // denominator)

    def _decide(self, st: ArbiterState, g: Gathering, time: int) -> list[Any]:
        todo = g.order
        assert todo is not None
        key, order, channel = todo.key, todo.order, self.channels[todo.channel]
        ext_id = order.doc["external_order_id"]
        pending = st.pending.get(key)
        raw = todo.raw
        if pending is not None:  # accepted already, its ERP row not seen yet: idempotent
            out: list[Any] = [Ignored("duplicate submission of an accepted order", raw.topic, raw.partition,
                                      raw.offset)]
            changed = differences(pending[3], order.doc)
            if changed:
                out.append(conflict(key, changed, raw, time))
            return out
        catalog = Catalog()
        if g.customer is not None:
            catalog.customers[g.customer.customer_id] = g.customer
        for answer in g.lines.values():
            if answer.status != "unknown":
                catalog.items[answer.sku] = answer.status
            for price_list, price in answer.prices:
                catalog.prices[(price_list, answer.sku)] = Decimal(price)
            catalog.ats[(channel.id, answer.sku)] = self.ats(st, channel.id, answer)
        reasons = validate(order, channel, catalog)
        out = [IntakeDecision(channel.id, ext_id, tuple(reasons), time)]
        if reasons:
            detail = {"kafka": _coordinates(raw), "reasons": reasons}
            out.extend(exception(r, "warning", "channel_order", key, REASON_TEXT[r], detail, time) for r in reasons)
            return out
        customer = catalog.customers[order.doc["customer_id"]]
        lines = tuple((int(line["line_no"]), str(line["sku"]), int(line["qty"])) for line in order.lines)
        st.pending[key] = (time, time + self.ttl_ms(channel.id), lines, order.doc)
        for _, sku, qty in lines:
            st.reserved[sku] = st.reserved.get(sku, 0) + qty
        out.append(Emit(ORDER_INTAKE_OUT_TOPIC, f"{channel.id}:{ext_id}", ACCEPTED_ORDER_SCHEMA,
                        accepted_order(order, customer, time)))
        out.extend(Reservation(sku, f"{key}/{line_no}", qty) for line_no, sku, qty in lines)
        return out

    def _release(self, st: ArbiterState, key: str) -> list[Any]:
        entry = st.pending.pop(key, None)
        if entry is None:
            return []
        out: list[Any] = []
        for line_no, sku, qty in entry[2]:
            left = st.reserved.get(sku, 0) - qty
            if left:
                st.reserved[sku] = left
            else:
                st.reserved.pop(sku, None)
            out.append(Reservation(sku, f"{key}/{line_no}", 0))
        return out

    def _source(self, st: ArbiterState, event: Emit, time: int) -> list[Any]:
        """The ERP imported the order (it appears in sales_orders) or marked its intake failed: release."""
        v = event.value
        if v["op"] != "upsert":
            return []
        if event.topic == ORDER_TOPIC or (event.topic == ORDER_INTAKE_TOPIC and v.get("status") == "failed"):
            return self._release(st, f"{v['channel']}/{v['external_order_id']}")
        return []

    def _expire(self, st: ArbiterState, now: int) -> list[Any]:
        out: list[Any] = []
        for key, (accepted_ms, expiry, _, _) in sorted(st.pending.items(), key=lambda kv: (kv[1][1], kv[0])):
            if expiry > now:
                continue
            out.extend(self._release(st, key))
            out.append(exception(
                "intake_unconfirmed", "warning", "order_intake", key,
                f"accepted {now - accepted_ms} ms ago, not in the ERP within the {expiry - accepted_ms} ms TTL;"
                " its reservation is released", {"accepted_at_ms": accepted_ms}, now))
        return out



def accepted_order(order: Order, customer: Customer, time: int) -> dict[str, Any]:
    """The io.erpsync.AcceptedOrder value: money at the ERP's scales, the customer's jurisdiction if none."""
    doc = order.doc
    placed = datetime.fromisoformat(doc["placed_at"])
    return {
        "channel": doc["channel"], "external_order_id": doc["external_order_id"],
        "customer_id": doc["customer_id"], "payment_status": doc["payment_status"],
        "tax_jurisdiction": doc.get("tax_jurisdiction") or customer.tax_jurisdiction,
        "fulfillment_method": doc["fulfillment_method"], "currency": doc["currency"],
        "placed_at": (placed - _EPOCH) // timedelta(microseconds=1),
        **{money: str(Decimal(doc.get(money) or 0).quantize(Decimal(1).scaleb(-MONEY_SCALE)))
           for money in MONEY_FIELDS},
        "lines": [{"line_no": line["line_no"], "sku": line["sku"], "qty": line["qty"],
                   "unit_price": str(Decimal(line["unit_price"]).quantize(Decimal(1).scaleb(-PRICE_SCALE)))}
                  for line in order.lines],
        "accepted_at_ms": time,
    }


def intake_digest(value: Mapping[str, Any]) -> str:
    """A short fingerprint of an accepted order (logs and exception details)."""
    return hashlib.blake2b(json.dumps(order_digest(value), sort_keys=True).encode(), digest_size=8).hexdigest()
