"""The true status of an order (spec section 7), derived from every fact about it, not the last event.

``OrderFacts`` holds what the ERP, the WMS and intake governance have said about one order, each
row fenced by its source position; ``derive`` turns the facts into the OrderStatus a channel sees,
in the spec's precedence. Publishing only when the record differs keeps channels free of noise.

Facts reach the order's key ("<channel>/<external order id>") through two routers, because WMS
rows do not carry it: ``ShipmentRouter`` (keyed by shipment id) stamps shipment lines with their
order id, ``OrderRouter`` (keyed by ERP order id) learns the channel key from the ERP order header;
both hold facts that arrive before what they need. ``StatusBook`` (keyed by the channel key)
publishes the status, raises the discrepancy exceptions (invoice, freight, overship, credit) and
arms the SLA deadlines of ``state.sla``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from state import exception, newer
from state.records import Emit
from state.sla import Deadline, Slas

ORDER_STATUS_SCHEMA = "io.erpsync.OrderStatus"
SHIPPED_STATES = frozenset({"dispatched", "delivered"})
STATUS_FACTS = frozenset({"canonical.order", "canonical.order-line", "canonical.allocation", "canonical.shipment",
                          "canonical.shipment-line", "canonical.invoice"})
CENT = Decimal("0.01")  # amounts are compared in cents, rounded half up as the ERP (PostgreSQL) rounds


@dataclass(frozen=True, slots=True)
class IntakeDecision:
    """Intake governance accepted (reasons empty) or rejected an order."""

    channel: str
    external_order_id: str
    reasons: tuple[str, ...]
    event_ms: int


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
    last_fact_ms: int = 0
    newest_ms: int = 0  # newest event time over every fact, returns and credit memos included
    applied: int = 0  # facts recorded so far: a count no redelivery or batching changes

    def apply(self, event: Emit | IntakeDecision) -> bool:
        """Record a fact; False when it is stale or a duplicate (nothing changed)."""
        if self._apply(event):
            self.applied += 1
            self.newest_ms = max(self.newest_ms, self.last_fact_ms, event.event_ms if isinstance(
                event, IntakeDecision) else int(event.value["source"]["commit_ts_ms"]))
            return True
        return False

    def _apply(self, event: Emit | IntakeDecision) -> bool:
        if isinstance(event, IntakeDecision):
            if self.intake == event:
                return False
            self.intake = event
            self.last_fact_ms = max(self.last_fact_ms, event.event_ms)
            return True
        v = event.value
        src = v["source"]
        position, deleted = src["position"], v["op"] == "delete"
        topic = event.topic
        if topic == "canonical.order":
            if not newer(self.header, position):
                return False
            self.header = (position, v["order_id"], "deleted" if deleted else v["status"])
            if not deleted and v.get("order_total") is not None:
                self.totals = (Decimal(v["order_total"]), Decimal(v.get("freight_total") or 0))
            self.accepted_ms = self.accepted_ms or int(src["commit_ts_ms"])
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
            self.allocations[v["allocation_id"]] = (position, v["line_no"], v["qty"] or 0,
                                                    "deleted" if deleted else v["status"])
        elif topic == "canonical.shipment":
            if not newer(self.shipments.get(v["shipment_id"]), position):
                return False
            self.shipments[v["shipment_id"]] = (position, v["carrier"] or "", v["tracking_no"],
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
            self.last_fact_ms = max(self.last_fact_ms, int(src["commit_ts_ms"]))
        return True


def derive(facts: OrderFacts, channel: str, external_order_id: str) -> dict[str, Any] | None:
    """The OrderStatus record for a channel, or None while nothing is known to show.

    All of it is what a channel sees, `last_fact_ms` included: the newest event time over every fact
    the status shows (intake decision, ERP order, lines, allocations, shipments, invoices), a
    maximum over the set of facts. So the last record published for an order is the same whatever
    order or batches its facts came in (a replay publishes what the live pipeline did); a fact that
    changes nothing else still moves it, and is published: the channel learns its view is current.
    """
    header = facts.header if facts.header is not None and facts.header[2] != "deleted" else None
    lines = {n: line for n, line in facts.lines.items() if line[3] in ("open", "shipped")}
    allocated: dict[int, int] = {}
    for _, line_no, qty, status in facts.allocations.values():
        if status not in ("cancelled", "deleted"):
            allocated[line_no] = allocated.get(line_no, 0) + qty
    shipped: dict[int, int] = {}
    for (shipment_id, line_no), (_, qty) in facts.shipment_lines.items():
        shipment = facts.shipments.get(shipment_id)
        if shipment is not None and shipment[3] in SHIPPED_STATES:
            shipped[line_no] = shipped.get(line_no, 0) + qty
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


def shipped_by_line(facts: OrderFacts) -> dict[int, int]:
    shipped: dict[int, int] = {}
    for (shipment_id, line_no), (_, qty) in facts.shipment_lines.items():
        shipment = facts.shipments.get(shipment_id)
        if shipment is not None and shipment[3] in SHIPPED_STATES:
            shipped[line_no] = shipped.get(line_no, 0) + qty
    return shipped


def checks(facts: OrderFacts) -> dict[str, tuple[str, dict[str, Any]]]:
    """Discrepancies true now: kind -> (reason, detail). Compared only when both sides are known."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    posted = [i for i in facts.invoices.values() if i[3]]
    if posted and facts.totals is not None:
        invoiced = sum((i[1] for i in posted), Decimal(0))
        if invoiced != facts.totals[0]:
            found["invoice_discrepancy"] = (f"invoiced {invoiced} but the order total is {facts.totals[0]}",
                                            {"invoice_total": str(invoiced), "order_total": str(facts.totals[0])})
        billed = sum((i[2] for i in posted), Decimal(0))
        live = [sid for sid, s in facts.shipments.items() if s[3] != "deleted"]
        shipped_freight = sum((facts.freight.get(sid, Decimal(0)) for sid in live), Decimal(0))
        if live and billed != shipped_freight:
            found["freight_discrepancy"] = (f"invoiced freight {billed} but shipments cost {shipped_freight}",
                                            {"invoice_freight": str(billed), "shipment_freight": str(shipped_freight)})
    shipped = shipped_by_line(facts)
    over = {n: q for n, q in shipped.items() if n in facts.lines and q > facts.lines[n][2]
            and facts.lines[n][3] != "deleted"}
    if over:
        found["overship"] = ("more shipped than ordered on line(s) " + ", ".join(map(str, sorted(over))),
                             {"shipped": {str(n): q for n, q in over.items()}})
    for rma in sorted({c[1] for c in facts.credits.values() if c[1]}):
        returned = facts.returns.get(rma)
        if returned is None or returned[1] < 0:
            continue
        credited = sum((c[2] for c in facts.credits.values() if c[1] == rma), Decimal(0))
        expected = (facts.prices.get(returned[1], Decimal(0)) * returned[2]).quantize(CENT, ROUND_HALF_UP)
        if credited != expected:
            found["credit_discrepancy"] = (f"credited {credited} for return {rma}, expected {expected}",
                                           {"rma_id": rma, "credited": str(credited), "expected": str(expected)})
    return found


def deadlines(facts: OrderFacts, status: str | None, slas: Slas) -> dict[str, Deadline]:
    """SLA deadlines armed now, by kind (credit_pending once per return), for the order's facts."""
    armed: dict[str, Deadline] = {}
    if status == "accepted" and facts.accepted_ms:
        armed["allocation_sla_breach"] = Deadline(
            "allocation_sla_breach", "", facts.accepted_ms + slas.allocation_ms,
            f"not allocated within {slas.allocation_ms} ms of entering the ERP")
    credited = {c[1] for c in facts.credits.values() if c[1]}
    for rma, (_, line_no, _, received_ms) in facts.returns.items():
        if line_no >= 0 and received_ms and rma not in credited:  # (the SLA starts when it is received)
            armed[f"credit_pending/{rma}"] = Deadline(
                "credit_pending", "", received_ms + slas.credit_ms,
                f"return {rma} received, no credit memo within {slas.credit_ms} ms", (("rma_id", rma),))
    mismatch = _mismatch(facts)
    if mismatch:
        armed["status_mismatch"] = Deadline("status_mismatch", "", 0, mismatch)
    return armed


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


# ----------------------------------------------------------------------------- routing facts to orders

ORDER_FACT_TOPICS = frozenset({"canonical.order", "canonical.order-line", "canonical.allocation",
                               "canonical.return"})
KEYED_FACT_TOPICS = {"canonical.invoice": "invoice_id", "canonical.credit-memo": "credit_memo_id"}  # via IdRouter
SHIPMENT_TOPICS = frozenset({"canonical.shipment", "canonical.shipment-line"})


@dataclass(slots=True)
class RouteState:
    """Where facts of one ERP order (or WMS shipment) go, and the facts waiting to learn it."""

    target: str | None = None
    waiting: list[Emit] = field(default_factory=list)


class ShipmentRouter:
    """Keyed by shipment id: stamps shipment lines with the shipment's order id."""

    def apply(self, state: RouteState | None, event: Emit) -> tuple[RouteState, list[Emit]]:
        st = state or RouteState()
        v = event.value
        if event.topic == "canonical.shipment" and v["op"] == "upsert" and st.target is None:
            st.target = str(v["order_id"])
        if st.target is None:
            st.waiting.append(event)
            return st, []
        ready, st.waiting = [*st.waiting, event], []
        order_id = int(st.target)
        return st, [e if e.value.get("order_id") == order_id else
                    Emit(e.topic, e.key, e.schema, {**e.value, "order_id": order_id}) for e in ready]


class IdRouter:
    """Keyed by "<topic>|<row id>": remembers a row's order id from its upserts and stamps its deletes.

    A PostgreSQL delete carries only the key (an invoice or credit memo id), not the order it
    belonged to; without this, a voided invoice would never reach its order.
    """

    def apply(self, state: RouteState | None, event: Emit) -> tuple[RouteState, list[Emit]]:
        st = state or RouteState()
        order_id = event.value.get("order_id")
        if order_id is not None:
            st.target = str(order_id)
            return st, [event]
        if st.target is None:
            return st, []  # the delete of a row never seen: no order to tell
        return st, [Emit(event.topic, event.key, event.schema, {**event.value, "order_id": int(st.target)})]


class OrderRouter:
    """Keyed by ERP order id: sends each fact to the order's channel key "<channel>/<external id>"."""

    def apply(self, state: RouteState | None, event: Emit) -> tuple[RouteState, list[tuple[str, Emit]]]:
        st = state or RouteState()
        v = event.value
        if event.topic == "canonical.order" and v["op"] == "upsert" and st.target is None:
            st.target = f"{v['channel']}/{v['external_order_id']}"
        if st.target is None:
            st.waiting.append(event)
            return st, []
        ready, st.waiting = [*st.waiting, event], []
        return st, [(st.target, e) for e in ready]


# ----------------------------------------------------------------------------- the status of one order


@dataclass(slots=True)
class BookState:
    facts: OrderFacts = field(default_factory=OrderFacts)
    shown: dict[str, Any] | None = None  # the record the channel was last told
    version: int = 0  # facts behind the record last published (OrderFacts.applied): the ops database fences on it
    raised: set[str] = field(default_factory=set)  # discrepancy kinds currently raised
    armed: dict[str, Deadline] = field(default_factory=dict)  # deadlines sent to the clock
    mismatch_since: int = 0
    key: str = ""
    dirty: bool = False  # facts changed since the last flush

    def copy(self) -> BookState:
        """A snapshot copy: containers copied, their (immutable) values shared."""
        f = self.facts
        facts = replace(f, lines=dict(f.lines), allocations=dict(f.allocations), shipments=dict(f.shipments),
                        shipment_lines=dict(f.shipment_lines), invoices=dict(f.invoices), prices=dict(f.prices),
                        freight=dict(f.freight), returns=dict(f.returns), credits=dict(f.credits))
        return BookState(facts, self.shown, self.version, set(self.raised), dict(self.armed), self.mismatch_since,
                         self.key, self.dirty)


class StatusBook:
    """Reducer keyed by "<channel>/<external order id>": facts -> OrderStatus, exceptions, deadlines.

    ``apply`` records a fact; ``flush`` (after each batch of facts, or after each fact) derives the
    status and publishes what changed, so one source transaction's rows make one status update.
    """

    def __init__(self, channels: set[str], slas: Slas) -> None:
        self.channels = channels
        self.slas = slas

    def apply(self, state: BookState | None, key: str,
              event: Emit | IntakeDecision) -> tuple[BookState, list[Emit | Deadline]]:
        st = state or BookState()
        st.key = key
        if st.facts.apply(event):
            st.dirty = True
        return st, []

    def flush(self, st: BookState) -> list[Emit | Deadline]:
        if not st.dirty:
            return []
        st.dirty = False
        key = st.key
        channel, _, ext_id = key.partition("/")
        record = derive(st.facts, channel, ext_id)
        out: list[Emit | Deadline] = []
        now = st.facts.newest_ms  # (exceptions: a credit problem's time is the credit facts' too)
        found = checks(st.facts)
        for kind, (reason, detail) in sorted(found.items()):
            if kind not in st.raised:
                out.append(exception(kind, "error", "order", key, reason, detail, now))
        st.raised = set(found)
        out.extend(self._deadlines(st, key, None if record is None else record["status"], now))
        if record is not None and record != st.shown and channel in self.channels:
            st.shown = record
            st.version = st.facts.applied  # grows with every fact, whatever the batches
            out.append(Emit(f"order-status.{channel}", ext_id, ORDER_STATUS_SCHEMA,
                            {**record, "version": st.version}))
        return out
    def _deadlines(self, st: BookState, key: str, status: str | None, now: int) -> list[Emit | Deadline]:
        wanted = deadlines(st.facts, status, self.slas)
        if "status_mismatch" in wanted:
            st.mismatch_since = st.mismatch_since or now
            d = wanted["status_mismatch"]
            wanted["status_mismatch"] = Deadline(d.kind, d.key, st.mismatch_since + self.slas.status_grace_ms,
                                                 d.reason)
        else:
            st.mismatch_since = 0
        out: list[Emit | Deadline] = []
        for name in sorted(set(st.armed) | set(wanted)):
            new, old = wanted.get(name), st.armed.get(name)
            timer_key = key if "/" not in name else f"{key}/{name.split('/', 1)[1]}"
            if new is None:
                out.append(Deadline(old.kind if old else name, timer_key, None))
            elif old is None or (old.due_ms, old.reason) != (new.due_ms, new.reason):
                out.append(Deadline(new.kind, timer_key, new.due_ms, new.reason, new.detail))
        st.armed = wanted
        return out
