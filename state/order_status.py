"""The true status of an order (spec section 7), derived from every fact about it, not the last event.

``OrderFacts`` holds what the ERP, the WMS and intake governance have said about one order, each row
fenced by its source position; ``derive`` turns the facts into the OrderStatus a channel sees, in the
spec's precedence; ``checks`` finds the discrepancies true now; ``deadlines`` the SLA timers armed now.

Facts reach the order's key ("<channel>/<external order id>") through two routers, because WMS rows
do not carry it: ``ShipmentRouter`` (keyed by shipment id) stamps shipment lines with their order id,
``OrderRouter`` (keyed by ERP order id) learns the channel key from the ERP order header; both hold
facts that arrive before what they need, and both move a row's facts when its order changes.

``StatusBook`` (keyed by the channel key) applies facts in event-time order and, once per instant,
publishes the status when something a channel sees changed, raises a discrepancy when it becomes
true and resolves it (naming the fact that cleared it) when it no longer holds, and arms or disarms
the SLA timers of ``state.timers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from state import exception, newer
from state.intake import IntakeDecision
from state.records import Emit, Reseed, pickled_by_position
from state.timers import Deadline, arm, overdue

ORDER_STATUS_SCHEMA = "io.erpsync.OrderStatus"
SHIPPED_STATES = frozenset({"dispatched", "delivered"})
STATUS_FACTS = frozenset({"canonical.order", "canonical.order-line", "canonical.allocation", "canonical.shipment",
                          "canonical.shipment-line", "canonical.invoice"})
CENT = Decimal("0.01")  # amounts are compared in cents, rounded half up as the ERP (PostgreSQL) rounds
CHECK_SEVERITY = "error"


@dataclass(frozen=True, slots=True)
class Slas:
    """How long event time may pass before an open situation becomes an exception."""

    allocation_ms: int = 4 * 3600 * 1000  # accepted by the ERP, not allocated by the WMS
    status_grace_ms: int = 15 * 60 * 1000  # ERP and WMS disagree about an order
    credit_ms: int = 72 * 3600 * 1000  # return received, no credit memo
    unknown_sku_ms: int = 60 * 1000  # stock or orders for a SKU the item master does not have (yet)


@pickled_by_position
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
    # invoice id -> (pos, total, freight, posted); a deleted (voided) invoice stays as a fence, not posted
    invoices: dict[int, tuple[str, Decimal, Decimal, bool]] = field(default_factory=dict)
    # what the checks compare: order totals (order total, freight), line prices, shipment freight,
    # returns (rma -> pos, line, qty, received ms) and credit memos (id -> pos, rma, amount)
    totals: tuple[Decimal, Decimal] | None = None
    prices: dict[int, Decimal] = field(default_factory=dict)
    freight: dict[int, Decimal] = field(default_factory=dict)
    returns: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    credits: dict[int, tuple[str, str | None, Decimal]] = field(default_factory=dict)
    accepted_ms: int = 0  # event time the ERP order first appeared
    last_fact_ms: int = 0  # newest event time of a fact the status shows
    applied: int = 0  # facts recorded so far: a count no redelivery or batching changes
    source: dict[str, Any] | None = None  # source coordinates of the newest fact applied

    def apply(self, event: Emit | IntakeDecision, time: int) -> bool:
        """Record a fact at event time `time`; False when it is stale or a duplicate (nothing changed)."""
        if not self._apply(event, time):
            return False
        self.applied += 1
        if isinstance(event, Emit):
            self.source = event.value["source"]
        return True

    def _apply(self, event: Emit | IntakeDecision, time: int) -> bool:
        if isinstance(event, IntakeDecision):
            if self.intake == event:
                return False
            self.intake = event
            self.last_fact_ms = max(self.last_fact_ms, time)
            return True
        v = event.value
        position, deleted = v["source"]["position"], v["op"] == "delete"
        topic = event.topic
        if topic == "canonical.order":
            if not newer(self.header, position):
                return False
            self.header = (position, v["order_id"], "deleted" if deleted else v["status"])
            if not deleted and v.get("order_total") is not None:
                self.totals = (Decimal(v["order_total"]), Decimal(v.get("freight_total") or 0))
            self.accepted_ms = self.accepted_ms or time
        elif topic == "canonical.order-line":
            if not newer(self.lines.get(v["line_no"]), position):
                return False
            if deleted:
                self.lines[v["line_no"]] = (position, "", 0, "deleted")
            else:
                self.lines[v["line_no"]] = (position, v["sku"], v["qty"], v["status"])
                if v.get("unit_price") is not None:
                    self.prices[v["line_no"]] = Decimal(v["unit_price"])
        elif topic == "canonical.allocation":
            if not newer(self.allocations.get(v["allocation_id"]), position):
                return False
            self.allocations[v["allocation_id"]] = (position, v["line_no"] if v["line_no"] is not None else -1,
                                                    v["qty"] or 0, "deleted" if deleted else v["status"])
        elif topic == "canonical.shipment":
            if not newer(self.shipments.get(v["shipment_id"]), position):
                return False
            self.shipments[v["shipment_id"]] = (position, v.get("carrier") or "", v.get("tracking_no"),
                                                "deleted" if deleted else v["status"])
            self.freight[v["shipment_id"]] = Decimal(0 if deleted else v.get("freight_cost") or 0)
        elif topic == "canonical.shipment-line":
            key = (v["shipment_id"], v["line_no"])
            if not newer(self.shipment_lines.get(key), position):
                return False
            self.shipment_lines[key] = (position, 0 if deleted else v["qty"])
        elif topic == "canonical.invoice":
            if not newer(self.invoices.get(v["invoice_id"]), position):
                return False
            self.invoices[v["invoice_id"]] = (position, Decimal(0), Decimal(0), False) if deleted else (
                position, Decimal(v.get("invoice_total") or 0), Decimal(v.get("freight_total") or 0), True)
        elif topic == "canonical.return":
            if not newer(self.returns.get(v["rma_id"]), position):
                return False
            received = v.get("received_at")  # timestamp-micros; None while the return is not received yet
            self.returns[v["rma_id"]] = (position, -1, 0, 0) if deleted else (
                position, v["line_no"], v["qty"], 0 if received is None else int(received) // 1000)
        elif topic == "canonical.credit-memo":
            if not newer(self.credits.get(v["credit_memo_id"]), position):
                return False
            self.credits[v["credit_memo_id"]] = (position, None, Decimal(0)) if deleted else (
                position, v["rma_id"], Decimal(v["amount"]))
        else:
            return False
        if topic in STATUS_FACTS:  # returns and credit memos are not part of what the status shows
            self.last_fact_ms = max(self.last_fact_ms, time)
        return True



def shipped_by_line(facts: OrderFacts) -> dict[int, int]:
    shipped: dict[int, int] = {}
    for (shipment_id, line_no), (_, qty) in facts.shipment_lines.items():
        shipment = facts.shipments.get(shipment_id)
        if shipment is not None and shipment[3] in SHIPPED_STATES:
            shipped[line_no] = shipped.get(line_no, 0) + qty
    return shipped


def derive(facts: OrderFacts, channel: str, external_order_id: str) -> dict[str, Any] | None:
    """The OrderStatus record for a channel, or None while nothing is known to show.

    All of it is what a channel sees, `last_fact_ms` included: the newest event time over every fact
    the status shows, a maximum over the set of facts, so the last record of an order is the same
    whatever the order of its facts' arrival.
    """
    header = facts.header if facts.header is not None and facts.header[2] != "deleted" else None
    lines = {n: line for n, line in facts.lines.items() if line[3] in ("open", "shipped")}
    allocated: dict[int, int] = {}
    for _, line_no, qty, status in facts.allocations.values():
        if status not in ("cancelled", "deleted"):
            allocated[line_no] = allocated.get(line_no, 0) + qty
    shipped = shipped_by_line(facts)
    live_shipments = [s for s in facts.shipments.values() if s[3] != "deleted"]

    reasons: list[str] = []
    if header is not None:
        erp_status = header[2]
        covered = bool(lines)
        if erp_status == "cancelled":
            status = "cancelled"
        elif erp_status == "closed":
            status = "closed"
        elif any(i[3] for i in facts.invoices.values()):
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


# ----------------------------------------------------------------------------- checks and deadlines


def checks(facts: OrderFacts) -> dict[str, tuple[str, dict[str, Any]]]:
    """Discrepancies true now: kind -> (reason, detail). Compared only when both sides are known."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    posted = [i for i in facts.invoices.values() if i[3]]
    live = [sid for sid, s in facts.shipments.items() if s[3] != "deleted"]
    if posted and facts.totals is not None:
        invoiced = sum((i[1] for i in posted), Decimal(0))
        if invoiced != facts.totals[0]:
            found["invoice_discrepancy"] = (f"invoiced {invoiced} but the order total is {facts.totals[0]}",
                                            {"invoice_total": str(invoiced), "order_total": str(facts.totals[0])})
    if posted:
        billed = sum((i[2] for i in posted), Decimal(0))
        shipped_freight = sum((facts.freight.get(sid, Decimal(0)) for sid in live), Decimal(0))
        if not live and billed:
            found["freight_discrepancy"] = (f"invoiced freight {billed} but nothing was shipped",
                                            {"invoice_freight": str(billed), "shipment_freight": "0"})
        elif live and billed != shipped_freight:
            found["freight_discrepancy"] = (f"invoiced freight {billed} but shipments cost {shipped_freight}",
                                            {"invoice_freight": str(billed), "shipment_freight": str(shipped_freight)})
    shipped = shipped_by_line(facts)
    if facts.header is not None:
        over = {}
        for n, q in shipped.items():
            line = facts.lines.get(n)
            if q > 0 and (line is None or line[3] == "deleted" or q > line[2]):
                over[n] = q
        if over:
            found["overship"] = ("more shipped than ordered on line(s) " + ", ".join(map(str, sorted(over))),
                                 {"shipped": {str(n): q for n, q in sorted(over.items())},
                                  "not_on_order": sorted(n for n in over if n not in facts.lines
                                                         or facts.lines[n][3] == "deleted")})
    for rma in sorted({c[1] for c in facts.credits.values() if c[1]}):
        returned = facts.returns.get(rma)
        if returned is None or returned[1] < 0:
            continue
        credited = sum((c[2] for c in facts.credits.values() if c[1] == rma), Decimal(0))
        expected = (facts.prices.get(returned[1], Decimal(0)) * returned[2]).quantize(CENT, ROUND_HALF_UP)
        if credited != expected:
            found[f"credit_discrepancy/{rma}"] = (f"credited {credited} for return {rma}, expected {expected}",
                                                  {"rma_id": rma, "credited": str(credited),
                                                   "expected": str(expected)})
    return found


def _mismatch(facts: OrderFacts) -> str:
    """Why the ERP and the WMS disagree about the order, or "" when they agree."""
    if facts.header is None:
        return ""
    erp = facts.header[2]
    shipped = shipped_by_line(facts)
    open_lines = {n: line[2] for n, line in facts.lines.items() if line[3] in ("open", "shipped")}
    covered = bool(open_lines) and all(shipped.get(n, 0) >= qty for n, qty in open_lines.items())
    if erp in ("shipped", "invoiced", "closed") and open_lines and not covered:
        short = sorted(n for n, qty in open_lines.items() if shipped.get(n, 0) < qty)
        return f"the ERP says {erp} but the WMS has not dispatched all of line(s) {', '.join(map(str, short))}"
    if covered and erp in ("entered", "released", "allocated", "on_hold"):
        return f"the WMS dispatched every line but the ERP still says {erp}"
    live_allocations = any(a[3] not in ("cancelled", "deleted", "shipped") for a in facts.allocations.values())
    if erp == "cancelled" and live_allocations:
        return "the ERP cancelled the order but the WMS still holds allocations"
    return ""


def situations(facts: OrderFacts, status: str | None, slas: Slas, mismatch_since: int,
               now: int) -> dict[str, tuple[str, int, str, tuple[tuple[str, Any], ...]]]:
    """SLA situations open now: name -> (kind, due, reason, detail)."""
    open_now: dict[str, tuple[str, int, str, tuple[tuple[str, Any], ...]]] = {}
    if status == "accepted" and facts.accepted_ms:
        open_now["allocation_sla_breach"] = (
            "allocation_sla_breach", facts.accepted_ms + slas.allocation_ms,
            f"not allocated within {slas.allocation_ms} ms of entering the ERP", ())
    credited = {c[1] for c in facts.credits.values() if c[1]}
    for rma, (_, line_no, _, received_ms) in facts.returns.items():
        if line_no >= 0 and received_ms and rma not in credited:  # (the SLA starts when it is received)
            open_now[f"credit_pending/{rma}"] = (
                "credit_pending", received_ms + slas.credit_ms,
                f"return {rma} received, no credit memo within {slas.credit_ms} ms", (("rma_id", rma),))
    mismatch = _mismatch(facts)
    if mismatch:
        open_now["status_mismatch"] = ("status_mismatch", (mismatch_since or now) + slas.status_grace_ms,
                                       mismatch, ())
    return open_now


# ----------------------------------------------------------------------------- routing facts to orders

ORDER_FACT_TOPICS = frozenset({"canonical.order", "canonical.order-line", "canonical.allocation",
                               "canonical.return", "canonical.invoice", "canonical.credit-memo"})
SHIPMENT_TOPICS = frozenset({"canonical.shipment", "canonical.shipment-line"})


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Routed:
    """A fact on its way to the status of channel order `key`."""

    key: str
    fact: Emit


def retraction(fact: Emit, cause: Emit) -> Emit:
    """The fact as a delete at the position of `cause` (the change that moved it): what its old order forgets."""
    return Emit(fact.topic, fact.key, fact.schema, {**fact.value, "op": "delete", "source": cause.value["source"]},
                cause.time, cause.order, tx=cause.tx)


def moved(fact: Emit, cause: Emit, **changes: Any) -> Emit:
    """The fact for its new order, at the position of the change that moved it."""
    return Emit(fact.topic, fact.key, fact.schema, {**fact.value, **changes, "source": cause.value["source"]},
                cause.time, cause.order, tx=cause.tx)


def kept(fact: Emit) -> Emit:
    """What a router keeps of a fact it sent: what ``retraction`` and ``moved`` read.

    Not its source coordinates, event time or transaction: both take them from the change that moves the fact.
    """
    return Emit(fact.topic, fact.key, fact.schema, {k: v for k, v in fact.value.items() if k != "source"})


@pickled_by_position
@dataclass(slots=True)
class RouteState:
    """Where facts of one ERP order (or WMS shipment) go, the facts waiting to learn it, and what went there."""

    target: str | None = None
    waiting: list[Emit] = field(default_factory=list)
    sent: dict[tuple[str, str], Emit] = field(default_factory=dict)  # (topic, key) -> newest fact sent, kept



class ShipmentRouter:
    """Keyed by shipment id: stamps shipment lines with the shipment's order id (WMS lines lack it)."""

    def apply(self, state: RouteState | None, key: str, item: Any, time: int) -> tuple[RouteState | None, list[Any]]:
        if not isinstance(item, Emit):
            return state, []
        st = state or RouteState()
        v = item.value
        out: list[Any] = []
        if item.topic == "canonical.shipment" and v.get("order_id") is not None:
            target = str(v["order_id"])
            if st.target is not None and target != st.target:  # moved to another order: its lines go too
                lines = [f for (topic, _), f in st.sent.items() if topic != "canonical.shipment"]
                out.extend(retraction(f, item) for f in st.sent.values())
                out.extend(moved(f, item, order_id=int(target)) for f in lines)
                st.sent = {}
            st.target = target
        if st.target is None:
            st.waiting.append(item)
            return st, out
        ready, st.waiting = [*st.waiting, item], []
        order_id = int(st.target)
        for e in ready:
            stamped = self._stamp(e, order_id)
            st.sent[(e.topic, e.key)] = kept(stamped)
            out.append(stamped)
        if item.topic == "canonical.shipment" and (v["op"] == "delete" or v.get("status") == "delivered"):
            return None, out  # delivered (or gone): nothing more to route (late corrections are held, counted)
        return st, out

    @staticmethod
    def _stamp(e: Emit, order_id: int) -> Emit:
        if e.value.get("order_id") == order_id:
            return e
        return Emit(e.topic, e.key, e.schema, {**e.value, "order_id": order_id}, e.time, e.order)

    def close(self, state: RouteState | None, key: str, time: int) -> tuple[RouteState | None, list[Any]]:
        return state, []



class OrderRouter:
    """Keyed by ERP order id: sends each fact to the order's channel key "<channel>/<external id>"."""

    def apply(self, state: RouteState | None, key: str, item: Any, time: int) -> tuple[RouteState | None, list[Any]]:
        if not isinstance(item, Emit):
            return state, []
        st = state or RouteState()
        v = item.value
        out: list[Any] = []
        if item.topic == "canonical.order" and v["op"] == "upsert":
            target = f"{v['channel']}/{v['external_order_id']}"
            if st.target is not None and target != st.target:  # the order now belongs to another channel key
                out.extend(Routed(st.target, retraction(f, item)) for f in st.sent.values())
                out.extend(Routed(target, moved(f, item)) for f in st.sent.values())
                out.append(Routed(st.target, retraction(item, item)))
            st.target = target
        if st.target is None:
            st.waiting.append(item)
            return st, out
        ready, st.waiting = [*st.waiting, item], []
        for e in ready:
            if e.topic != "canonical.order":
                st.sent[(e.topic, e.key)] = kept(e)
            out.append(Routed(st.target, e))
        return st, out

    def close(self, state: RouteState | None, key: str, time: int) -> tuple[RouteState | None, list[Any]]:
        return state, []



# ----------------------------------------------------------------------------- the status of one order


@pickled_by_position
@dataclass(slots=True)
class BookState:
    facts: OrderFacts = field(default_factory=OrderFacts)
    shown: dict[str, Any] | None = None  # the record the channel was last told
    raised: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # discrepancies raised
    armed: dict[str, tuple[str, int, str, tuple[tuple[str, Any], ...]]] = field(default_factory=dict)
    mismatch_since: int = 0
    dirty: bool = False  # facts changed in this instant
    armed_ms: dict[str, int] = field(default_factory=dict)  # when each deadline in `armed` was armed



class StatusBook:
    """Keyed by "<channel>/<external order id>": facts -> OrderStatus, exceptions and deadlines, once per instant."""

    def __init__(self, channels: set[str], slas: Slas) -> None:
        self.channels = channels
        self.slas = slas

    def apply(self, state: BookState | None, key: str, item: Any, time: int) -> tuple[BookState | None, list[Any]]:
        fact = item.fact if isinstance(item, Routed) else item
        if not isinstance(fact, Emit | IntakeDecision):
            return state, []
        st = state or BookState()
        if st.facts.apply(fact, time):
            st.dirty = True
        return st, []

    def close(self, state: BookState | None, key: str, time: int) -> tuple[BookState | None, list[Any]]:
        if state is None or not state.dirty:
            return state, []
        st = state
        st.dirty = False
        channel, _, ext_id = key.partition("/")
        record = derive(st.facts, channel, ext_id)
        out: list[Any] = []
        found = checks(st.facts)
        source = st.facts.source
        for name, (reason, detail) in sorted(found.items()):
            if name not in st.raised:
                out.append(exception(name.split("/")[0], CHECK_SEVERITY, "order", _key(key, name), reason, detail,
                                     time, source=source))
        for name in sorted(set(st.raised) - set(found)):
            reason, detail = st.raised[name]
            out.append(exception(name.split("/")[0], CHECK_SEVERITY, "order", _key(key, name), f"resolved: {reason}",
                                 detail, time, source=source, state="resolved"))
        st.raised = found
        out.extend(self._deadlines(st, key, None if record is None else record["status"], time))
        if record is not None and record != st.shown and channel in self.channels:
            st.shown = record
            out.append(Emit(f"order-status.{channel}", ext_id, ORDER_STATUS_SCHEMA,
                            {**record, "version": st.facts.applied}))
        return st, out

    def republish(self, state: BookState | None, key: str, stores: frozenset[str]) -> list[Any]:
        """What the ops database should hold for this order now, after it lost its data.

        The status the channel was last told and the discrepancies open now.
        """
        if state is None or "ops-db" not in stores:
            return []
        ops = frozenset({"ops-db"})
        out: list[Any] = []
        channel, _, ext_id = key.partition("/")
        if state.shown is not None and channel in self.channels:
            out.append(Reseed(ops, Emit(f"order-status.{channel}", ext_id, ORDER_STATUS_SCHEMA,
                                        {**state.shown, "version": state.facts.applied})))
        for name, (reason, detail) in sorted(state.raised.items()):
            out.append(Reseed(ops, exception(name.split("/")[0], CHECK_SEVERITY, "order", _key(key, name), reason,
                                             detail, state.facts.last_fact_ms, source=state.facts.source)))
        return out

    def _deadlines(self, st: BookState, key: str, status: str | None, time: int) -> list[Any]:
        if _mismatch(st.facts):
            st.mismatch_since = st.mismatch_since or time
        else:
            st.mismatch_since = 0
        wanted = situations(st.facts, status, self.slas, st.mismatch_since, time)
        out: list[Any] = []
        for name in sorted(set(st.armed) | set(wanted)):
            new, old = wanted.get(name), st.armed.get(name)
            if old is not None and (new is None or new[1] != old[1]):
                kind, due, reason, detail = old
                out.append(Deadline(kind, _key(key, name), due, time, False))
                armed_ms = st.armed_ms.pop(name, time)
                if time >= due:  # it fell due while open: raised at its due time, resolved now
                    out.extend(overdue(kind, "order", _key(key, name), reason, due, time, dict(detail),
                                       armed_ms=armed_ms))
            if new is not None and (old is None or new[1] != old[1]):
                kind, due, reason, detail = new
                out.extend(arm(Deadline(kind, _key(key, name), due, time, True, reason, detail)))
                st.armed_ms[name] = time  # (a due time from a source column may be past already)
        st.armed = wanted
        return out



def _key(order_key: str, name: str) -> str:
    """The exception's business key: the order's, plus the return or other part a kind is about."""
    return order_key if "/" not in name else f"{order_key}/{name.split('/', 1)[1]}"
