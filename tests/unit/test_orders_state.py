"""The orders flow's reducers: the intake desk, fact routing, the status book and the SLA clock."""

from __future__ import annotations

import itertools
import json
from typing import Any

from erpsync.channels import load_channels
from state import Tick
from state.ats import Commitment, NetworkChange, Reservation, SkuNetwork
from state.intake import DeskState, IntakeDesk
from state.order_status import BookState, IntakeDecision, OrderRouter, ShipmentRouter, StatusBook
from state.records import DeadLetter, Emit, Ignored, RawRecord
from state.sla import Deadline, Deadlines, Slas

CHANNELS = load_channels()
BY_ID = {c.id: c for c in CHANNELS}
POS = itertools.count(1)
T0 = 1_795_000_000_000


def fact(topic: str, value: dict[str, Any], *, system: str = "erp", ms: int = T0, delete: bool = False) -> Emit:
    pos = next(POS)
    return Emit(topic, "k", "x", {**value, "op": "delete" if delete else "upsert", "source": {
        "system": system, "position": f"{pos:016x}/{pos:016x}", "commit_ts_ms": ms}})


def channel_order(ext: str, *, channel: str = "marketplace", qty: int = 2, price: str = "12.5000",
                  customer: str = "C-1", offset: int = 0, ms: int = T0, **changes: Any) -> RawRecord:
    doc = {"channel": channel, "external_order_id": ext, "customer_id": customer, "payment_status": "approved",
           "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP", "currency": "USD",
           "placed_at": "2026-11-27T10:00:00Z", "freight_total": "5.00", "discount_total": "0.00",
           "tax_total": "1.20", "lines": [{"line_no": 1, "sku": "SKU-1", "qty": qty, "unit_price": price}]}
    doc.update(changes)
    return RawRecord("commerce.orders", 0, offset, f"{channel}:{ext}".encode(), json.dumps(doc).encode(), ms)


def catalog_events(on_hand: int = 10) -> list[Any]:
    network = SkuNetwork(CHANNELS)
    events: list[Any] = [
        fact("canonical.customer", {"customer_id": "C-1", "price_list_id": "PL-1", "credit_hold": False,
                                    "tax_jurisdiction": "US-TX-AUSTIN"}),
        fact("canonical.item", {"sku": "SKU-1", "safety_stock": 0, "status": "active"}),
        fact("canonical.price", {"price_list_id": "PL-1", "sku": "SKU-1", "unit_price": "12.5000",
                                 "valid_from": 20000, "valid_to": None}),
    ]
    state = None
    for e in (events[1], fact("canonical.inventory-position", {"sku": "SKU-1", "location": "DC-EAST",
                                                               "on_hand": on_hand, "allocated": 0, "in_transit": 0},
                              system="wms")):
        state, changes = network.apply(state, "SKU-1", e)
        events.extend(changes)
    events.extend(ticks(T0))  # source event time has reached T0 (the flow ticks on canonical events)
    return events


def ticks(ms: int) -> list[Tick]:
    return [Tick(ms, "erp"), Tick(ms, "wms")]


def run_desk(events: list[Any], state: DeskState | None = None, tolerance_ms: int = 0) -> tuple[DeskState, list[Any]]:
    desk = IntakeDesk(CHANNELS, tolerance_ms=tolerance_ms)
    out: list[Any] = []
    for e in events:
        state, o = desk.apply(state, e)
        out.extend(o)
    assert state is not None
    return state, out


def of(kind: type, out: list[Any]) -> list[Any]:
    return [o for o in out if isinstance(o, kind)]


def test_an_accepted_order_goes_to_the_erp_once_and_reserves_its_lines() -> None:
    state, out = run_desk([*catalog_events(), channel_order("MP-1"), channel_order("MP-1", offset=1)])
    accepted = [e for e in of(Emit, out) if e.topic == "erp.order-intake"]
    assert [e.key for e in accepted] == ["marketplace:MP-1"]
    assert accepted[0].value["tax_jurisdiction"] == "US-TX-AUSTIN" and accepted[0].value["accepted_at_ms"] == T0
    assert [(r.sku, r.qty) for r in of(Reservation, out)] == [("SKU-1", 2)]
    assert [d.reasons for d in of(IntakeDecision, out)] == [()]
    assert [i.reason for i in of(Ignored, out)] == ["duplicate submission of an accepted order"]
    assert state.reserved == {"SKU-1": 2}


def test_validation_counts_earlier_accepted_orders() -> None:
    # marketplace: DC-EAST 10 units x share 0.8 = 8; 5 reserved by the first order leaves floor(5 x 0.8) = 4
    state, out = run_desk([*catalog_events(10), channel_order("MP-1", qty=5), channel_order("MP-2", qty=5)])
    assert [d.reasons for d in of(IntakeDecision, out)] == [(), ("insufficient_stock",)]
    assert IntakeDesk(CHANNELS).ats(state, BY_ID["marketplace"], "SKU-1") == 4
    # the ERP order appears: the reservation is released (its commitment now counts via the network)
    erp_order = fact("canonical.order", {"order_id": 7, "channel": "marketplace", "external_order_id": "MP-1",
                                         "status": "entered"})
    state, out = run_desk([erp_order], state)
    assert [(r.key, r.qty) for r in of(Reservation, out)] == [("marketplace/MP-1/1", 0)]
    assert state.reserved == {}


def test_a_rejection_names_every_reason_and_raises_an_exception_per_reason() -> None:
    _, out = run_desk([*catalog_events(), channel_order("MP-9", price="9.0000", fulfillment_method="DRONE")])
    decision = of(IntakeDecision, out)[0]
    assert decision.reasons == ("invalid_fulfillment_method", "price_mismatch")
    kinds = sorted(e.value["kind"] for e in of(Emit, out) if e.topic == "sync.exceptions")
    assert kinds == ["invalid_fulfillment_method", "price_mismatch"]
    assert not of(Reservation, out) and not [e for e in of(Emit, out) if e.topic == "erp.order-intake"]


def test_malformed_orders_are_rejected_and_undecodable_bytes_go_to_the_dlq() -> None:
    bad_shape = RawRecord("commerce.orders", 0, 5, b"marketplace:MP-X", b'{"channel": "marketplace"}', T0)
    garbage = RawRecord("commerce.orders", 0, 6, b"marketplace:MP-Y", b"\xff\x00", T0)
    anonymous = RawRecord("commerce.orders", 0, 7, None, b"nope", T0)
    _, out = run_desk([*catalog_events(), bad_shape, garbage, anonymous])
    assert [(d.external_order_id, d.reasons) for d in of(IntakeDecision, out)] == [
        ("MP-X", ("malformed",)), ("MP-Y", ("malformed",))]
    assert [d.raw.offset for d in of(DeadLetter, out)] == [6, 7]


def test_an_order_ahead_of_the_sources_waits_for_them() -> None:
    # the order (Kafka time T0 + 5 s) arrives before the stock update the WMS committed at T0 + 4 s
    state, out = run_desk([*catalog_events(10), channel_order("MP-1", qty=50, ms=T0 + 5000)])
    assert out == [] and len(state.waiting) == 1
    restocked = NetworkChange("SKU-1", 99, "active", (100, 100, 100), T0 + 4000)  # the WMS at T0 + 4 s
    state, out = run_desk([restocked, *ticks(T0 + 4000)], state)
    assert out == []  # source time T0 + 4 s: still before the order
    state, out = run_desk([Tick(T0 + 5000, "erp")], state)
    assert out == []  # the ERP is there, the WMS is not (catching up, say)
    state, out = run_desk([Tick(T0 + 5000, "wms")], state)
    assert [d.reasons for d in of(IntakeDecision, out)] == [()]  # decided on the restocked state
    # a quiet WMS: live, the flow names it quiet after a wall-clock wait; at the end of input all go
    state, out = run_desk([Tick(T0 + 60_000, "erp"), channel_order("MP-2", qty=1, ms=T0 + 60_000)], state)
    assert out == []
    desk = IntakeDesk(CHANNELS, tolerance_ms=0)
    assert desk.release(state, frozenset({"erp"})) == [] and len(state.waiting) == 1
    assert [d.reasons for d in of(IntakeDecision, desk.release(state, frozenset({"wms"})))] == [()]
    assert state.waiting == []
    # replay judges quietness in event time: another system quiet_ms past the order
    state, _ = run_desk([channel_order("MP-3", qty=1, ms=T0 + 61_000)], state)
    replay_desk = IntakeDesk(CHANNELS, quiet_ms=1000, tolerance_ms=0)
    assert replay_desk.apply(state, Tick(T0 + 61_500, "erp"))[1] == []
    assert [type(o).__name__ for o in replay_desk.apply(state, Tick(T0 + 62_000, "erp"))[1]][:1] == ["IntakeDecision"]


def test_a_source_within_the_tolerance_counts_as_reached() -> None:
    # MariaDB stamps binlog events in whole seconds: a WMS at T0 + 4 s has reached an order at T0 + 4.9 s
    state, out = run_desk([*catalog_events(), *ticks(T0 + 4000), channel_order("MP-1", ms=T0 + 4900)],
                          tolerance_ms=1000)
    assert [d.reasons for d in of(IntakeDecision, out)] == [()]
    state, out = run_desk([channel_order("MP-2", ms=T0 + 5100)], state, tolerance_ms=1000)
    assert out == []  # beyond it: waits


def test_unknown_channel_goes_to_the_dlq() -> None:
    _, out = run_desk([*catalog_events(), channel_order("X-1", channel="fax")])
    assert len(of(DeadLetter, out)) == 1 and "unknown channel" in of(DeadLetter, out)[0].reason


def test_an_unconfirmed_intake_expires_on_event_time() -> None:
    ttl_ms = BY_ID["marketplace"].intake.intake_ttl_s * 1000
    state, out = run_desk([*catalog_events(), channel_order("MP-1"), *ticks(T0 + ttl_ms - 1000)])
    assert not [e for e in of(Emit, out) if e.topic == "sync.exceptions"]
    state, out = run_desk(ticks(T0 + ttl_ms), state)
    assert [e.value["kind"] for e in of(Emit, out)] == ["intake_unconfirmed"]
    assert [r.qty for r in of(Reservation, out)] == [0] and state.reserved == {}


def test_network_changes_are_fenced_by_version() -> None:
    state, _ = run_desk([NetworkChange("S", 5, "active", (9, 9, 9), T0),
                         NetworkChange("S", 4, "active", (1, 1, 1), T0)])
    assert state.network["S"] == (5, "active", (9, 9, 9))


def test_sku_network_excludes_nothing_but_reservations() -> None:
    network = SkuNetwork(CHANNELS)
    state, changes = None, []
    for e in catalog_events(10)[:3]:
        if isinstance(e, Emit) and e.topic == "canonical.item":
            state, changes = network.apply(state, "SKU-1", e)
    state, _ = network.apply(state, "SKU-1", fact("canonical.inventory-position", {
        "sku": "SKU-1", "location": "DC-WEST", "on_hand": 4, "allocated": 1, "in_transit": 2}, system="wms"))
    state, changes = network.apply(state, "SKU-1", Commitment("SKU-1", "7/1", 2, 1, "erp", "0009", T0))
    by_channel = dict(zip([c.id for c in CHANNELS], changes[0].networks, strict=True))
    assert by_channel == {"b2b-portal": 1, "inside-sales": 3, "marketplace": -2}  # 3 free (+2 in transit) - 2
    assert network.apply(state, "SKU-1", Commitment("SKU-1", "7/1", 2, 1, "erp", "0009", T0))[1] == []


# ----------------------------------------------------------------------------- routing and status


def test_routers_bring_wms_facts_to_the_channel_key_whatever_the_order() -> None:
    ship_router, order_router = ShipmentRouter(), OrderRouter()
    line = fact("canonical.shipment-line", {"shipment_id": 3, "line_no": 1, "qty": 2}, system="wms")
    ship_state, out = ship_router.apply(None, line)
    assert out == []  # waits for its shipment header
    ship_state, out = ship_router.apply(ship_state, fact("canonical.shipment", {
        "shipment_id": 3, "order_id": 7, "carrier": "UPS", "tracking_no": "1Z", "status": "dispatched"}, system="wms"))
    assert [(e.topic, e.value["order_id"]) for e in out] == [("canonical.shipment-line", 7), ("canonical.shipment", 7)]
    order_state, routed = None, []
    for e in out:  # WMS facts before the ERP header: held
        order_state, r = order_router.apply(order_state, e)
        routed.extend(r)
    assert routed == []
    order_state, routed = order_router.apply(order_state, fact("canonical.order", {
        "order_id": 7, "channel": "marketplace", "external_order_id": "MP-7", "status": "entered"}))
    assert [k for k, _ in routed] == ["marketplace/MP-7"] * 3


def book_run(events: list[Any], slas: Slas | None = None,
             state: BookState | None = None) -> tuple[BookState, list[Any]]:
    """Each fact in a batch of its own (flush after each), as facts arriving apart in time."""
    book = StatusBook({c.id for c in CHANNELS}, slas or Slas())
    out: list[Any] = []
    for e in events:
        state, o = book.apply(state, "marketplace/MP-7", e)
        out.extend(o)
        out.extend(book.flush(state))
    assert state is not None
    return state, out


def header(status: str, total: str = "30.00", freight: str = "5.00", ms: int = T0) -> Emit:
    return fact("canonical.order", {"order_id": 7, "channel": "marketplace", "external_order_id": "MP-7",
                                    "status": status, "order_total": total, "freight_total": freight}, ms=ms)


def order_line(qty: int = 2, price: str = "12.5000") -> Emit:
    return fact("canonical.order-line", {"order_id": 7, "line_no": 1, "sku": "SKU-1", "qty": qty, "unit_price": price,
                                         "status": "open"})


def shipment(status: str = "dispatched", freight: str = "5.00") -> Emit:
    return fact("canonical.shipment", {"order_id": 7, "shipment_id": 3, "carrier": "UPS", "tracking_no": "1Z",
                                       "status": status, "freight_cost": freight}, system="wms")


def shipped(qty: int) -> Emit:
    return fact("canonical.shipment-line", {"order_id": 7, "shipment_id": 3, "line_no": 1, "qty": qty}, system="wms")


def invoice(total: str = "30.00", freight: str = "5.00") -> Emit:
    return fact("canonical.invoice", {"order_id": 7, "invoice_id": 9, "invoice_total": total, "freight_total": freight})


def statuses(out: list[Any]) -> list[str]:
    return [e.value["status"] for e in out if isinstance(e, Emit) and e.topic == "order-status.marketplace"]


def exceptions(out: list[Any]) -> list[str]:
    return [e.value["kind"] for e in out if isinstance(e, Emit) and e.topic == "sync.exceptions"]


def test_the_published_version_does_not_depend_on_batching() -> None:
    facts = [IntakeDecision("marketplace", "MP-7", (), T0), header("entered"), order_line(), shipment(), shipped(2)]
    book = StatusBook({c.id for c in CHANNELS}, Slas())
    one_by_one, _ = book_run(facts)
    together = None
    for f in facts:
        together, _ = book.apply(together, "marketplace/MP-7", f)
    assert together is not None
    last = [e for e in book.flush(together) if isinstance(e, Emit) and e.topic.startswith("order-status.")][-1]
    assert last.value["version"] == one_by_one.version == 5  # a restart re-batching facts cannot go backwards


def test_one_batch_of_facts_makes_one_status_update() -> None:
    book = StatusBook({c.id for c in CHANNELS}, Slas())
    state = None
    for e in (header("entered"), order_line(), shipment("packed")):  # one source transaction
        state, _ = book.apply(state, "marketplace/MP-7", e)
    assert state is not None and statuses(book.flush(state)) == ["accepted"]
    assert book.flush(state) == []  # nothing new


def test_status_is_published_only_when_a_channel_visible_field_changes() -> None:
    _, out = book_run([IntakeDecision("marketplace", "MP-7", (), T0), header("entered"), order_line(),
                       header("released"), shipment(), shipped(2), invoice()])
    # released changes nothing a channel sees; the line, the carrier and each status do
    assert statuses(out) == ["received", "accepted", "accepted", "accepted", "shipped", "invoiced"]
    versions = [e.value["version"] for e in out if isinstance(e, Emit) and e.topic == "order-status.marketplace"]
    assert versions == [1, 2, 3, 5, 6, 7]  # the facts behind each record ("released" published nothing)
    assert exceptions(out) == []  # a clean order raises nothing


def test_invoice_and_freight_discrepancies_and_overship() -> None:
    _, out = book_run([header("shipped"), order_line(2), shipment(freight="7.50"), shipped(3),
                       invoice(total="31.00", freight="5.00")])
    assert sorted(exceptions(out)) == ["freight_discrepancy", "invoice_discrepancy", "overship"]
    _, again = book_run([invoice(total="31.00", freight="5.00")], state=book_run(
        [header("shipped"), order_line(2), shipment(freight="7.50"), shipped(3), invoice("31.00")])[0])
    assert exceptions(again) == []  # raised once while it lasts


def test_credit_discrepancy() -> None:
    ret = fact("canonical.return", {"order_id": 7, "rma_id": "R1", "line_no": 1, "qty": 1}, system="wms")
    memo = fact("canonical.credit-memo", {"order_id": 7, "credit_memo_id": 4, "rma_id": "R1", "amount": "10.00"})
    _, out = book_run([header("invoiced"), order_line(2, "12.5000"), ret, memo])
    assert exceptions(out) == ["credit_discrepancy"]


def deadlines(out: list[Any]) -> list[tuple[str, int | None]]:
    return [(d.kind, d.due_ms) for d in out if isinstance(d, Deadline)]


def test_sla_deadlines_arm_and_disarm_with_the_facts() -> None:
    slas = Slas(allocation_ms=1000, status_grace_ms=500, credit_ms=2000)
    state, out = book_run([header("entered", ms=T0), order_line(2)], slas)
    assert deadlines(out) == [("allocation_sla_breach", T0 + 1000)]
    alloc = fact("canonical.allocation", {"order_id": 7, "allocation_id": 1, "line_no": 1, "qty": 2,
                                          "status": "allocated"}, system="wms", ms=T0 + 10)
    state, out = book_run([alloc], slas, state)
    assert deadlines(out) == [("allocation_sla_breach", None)]
    # the ERP says shipped, the WMS has not dispatched: a mismatch, with a grace period
    state, out = book_run([header("shipped", ms=T0 + 20)], slas, state)
    assert deadlines(out) == [("status_mismatch", T0 + 20 + 500)]
    state, out = book_run([shipment(), shipped(2)], slas, state)
    assert deadlines(out) == [("status_mismatch", None)]
    ret = fact("canonical.return", {"order_id": 7, "rma_id": "R1", "line_no": 1, "qty": 1,
                                    "received_at": (T0 + 30) * 1000}, system="wms", ms=T0 + 31)
    state, out = book_run([ret], slas, state)
    assert deadlines(out) == [("credit_pending", T0 + 30 + 2000)]
    memo = fact("canonical.credit-memo", {"order_id": 7, "credit_memo_id": 4, "rma_id": "R1", "amount": "12.50"})
    state, out = book_run([memo], slas, state)
    assert deadlines(out) == [("credit_pending", None)] and exceptions(out) == []


def test_the_clock_fires_a_deadline_once_when_event_time_passes_it() -> None:
    clock = Deadlines()
    state, out = clock.apply(None, Deadline("allocation_sla_breach", "marketplace/MP-7", T0 + 1000, "late"))
    assert out == []
    state, out = clock.apply(state, Tick(T0 + 999))
    assert out == []
    state, out = clock.apply(state, Tick(T0 + 1000))
    assert [(e.value["kind"], e.value["business_key"]) for e in out] == [("allocation_sla_breach", "marketplace/MP-7")]
    state, out = clock.apply(state, Tick(T0 + 5000))
    assert out == []  # fired once
    state, out = clock.apply(state, Deadline("credit_pending", "marketplace/MP-7/R1", T0 + 6000, "no memo"))
    state, out = clock.apply(state, Deadline("credit_pending", "marketplace/MP-7/R1", None))
    state, out = clock.apply(state, Tick(T0 + 7000))
    assert out == []  # disarmed before it was due
    state, out = clock.apply(state, Deadline("status_mismatch", "marketplace/MP-7", T0 + 100, "disagree"))
    assert [e.value["kind"] for e in out] == ["status_mismatch"]  # already past due: fires at once


def test_a_short_shipment_the_erp_calls_shipped_is_a_status_mismatch() -> None:
    slas = Slas(status_grace_ms=500)
    state, out = book_run([header("entered"), order_line(2), shipment(), shipped(1)], slas)
    assert ("status_mismatch", T0 + 500) not in deadlines(out)
    _, out = book_run([header("invoiced", ms=T0 + 50), invoice()], slas, state)
    assert [k for k, d in deadlines(out) if d is not None] == ["status_mismatch"]


def test_credits_are_compared_in_cents() -> None:
    ret = fact("canonical.return", {"order_id": 7, "rma_id": "R1", "line_no": 1, "qty": 3}, system="wms")
    memo = fact("canonical.credit-memo", {"order_id": 7, "credit_memo_id": 4, "rma_id": "R1", "amount": "37.00"})
    _, out = book_run([header("invoiced"), order_line(3, "12.3333"), ret, memo])  # 36.9999 is 37.00
    assert exceptions(out) == []


def test_unknown_sku_waits_for_the_item_master_before_it_is_raised() -> None:
    from state.ats import SkuLedger  # noqa: PLC0415

    ledger, clock = SkuLedger(CHANNELS, unknown_sku_ms=5000), Deadlines()
    stock = fact("canonical.inventory-position", {"sku": "NEW-1", "location": "DC-EAST", "on_hand": 5,
                                                  "allocated": 0, "in_transit": 0}, system="wms", ms=T0)
    state, out = ledger.apply(None, "NEW-1", stock)
    armed = [d for d in out if isinstance(d, Deadline)]
    assert [(d.kind, d.key, d.due_ms, d.entity) for d in armed] == [("unknown_sku", "NEW-1", T0 + 5000, "item")]
    # the item arrives (another topic) within the grace: disarmed, never raised
    state, out = ledger.apply(state, "NEW-1", fact("canonical.item", {"sku": "NEW-1", "safety_stock": 0,
                                                                      "status": "active"}, ms=T0 + 1000))
    assert [(d.kind, d.due_ms) for d in out if isinstance(d, Deadline)] == [("unknown_sku", None)]
    clock_state, fired = clock.apply(None, armed[0])
    clock_state, fired = clock.apply(clock_state, [d for d in out if isinstance(d, Deadline)][0])
    assert clock.apply(clock_state, Tick(T0 + 10_000, "x"))[1] == []
    # a SKU that stays unknown is raised once the grace has passed
    _, out = SkuLedger(CHANNELS, unknown_sku_ms=5000).apply(None, "GHOST", fact(
        "canonical.inventory-position", {"sku": "GHOST", "location": "DC-EAST", "on_hand": 5, "allocated": 0,
                                         "in_transit": 0}, system="wms", ms=T0))
    clock_state, _ = clock.apply(None, [d for d in out if isinstance(d, Deadline)][0])
    _, fired = clock.apply(clock_state, Tick(T0 + 5000, "x"))
    assert [(e.value["kind"], e.value["entity"], e.value["business_key"]) for e in fired] == [
        ("unknown_sku", "item", "GHOST")]


def test_hostile_orders_are_rejected_not_crashing() -> None:
    nan_price = channel_order("MP-N1", price="NaN")
    huge_qty = channel_order("IS-H1", channel="inside-sales", qty=2**40)  # backorders: no stock check there
    twin_lines = RawRecord("commerce.orders", 0, 9, b"marketplace:MP-T1", json.dumps({
        **json.loads(channel_order("MP-T1").value or b"{}"),
        "lines": [{"line_no": 1, "sku": "SKU-1", "qty": 1, "unit_price": "12.5000"},
                  {"line_no": 1, "sku": "SKU-1", "qty": 1, "unit_price": "12.5000"}]}).encode(), T0)
    nul = channel_order("MP-Z1", customer="C-\x001")
    nul_key = RawRecord("commerce.orders", 0, 11, b"marketplace:MP-\x00", b"{}", T0)
    _, out = run_desk([*catalog_events(), nan_price, huge_qty, twin_lines, nul, nul_key])
    assert [(d.external_order_id, d.reasons) for d in of(IntakeDecision, out)] == [
        ("MP-N1", ("price_mismatch",)), ("IS-H1", ("invalid_quantity",)), ("MP-T1", ("malformed",)),
        ("MP-Z1", ("malformed",))]
    assert [d.raw.offset for d in of(DeadLetter, out)] == [11]  # an order id with NUL cannot be stored
    assert not [e for e in of(Emit, out) if e.topic == "erp.order-intake"]


def test_the_sla_clock_waits_for_the_slowest_stream_unless_it_is_idle() -> None:
    clock = Deadlines()
    state, _ = clock.apply(None, Tick(T0, "wms.wms.allocations#0"))
    state, _ = clock.apply(state, Deadline("allocation_sla_breach", "b2b-portal/X", T0 + 1000, "late"))
    # the ERP is 5 hours ahead (the WMS topic lags): not yet due, the allocation may still be unread
    state, out = clock.apply(state, Tick(T0 + 5 * 3600_000, "erp.erp.sales_orders#0"))
    assert out == [] and state.now_ms == T0
    state, _ = clock.apply(state, Deadline("allocation_sla_breach", "b2b-portal/X", None))  # allocated: disarmed
    # an idle WMS (named quiet by the flow) no longer holds the clock back
    state, _ = clock.apply(state, Deadline("allocation_sla_breach", "b2b-portal/Y", T0 + 2000, "late"))
    assert state.now_ms == T0
    fired = clock.advance(state, frozenset({"wms.wms.allocations#0"}))
    assert [e.value["business_key"] for e in fired] == ["b2b-portal/Y"] and state.now_ms == T0 + 5 * 3600_000


def test_a_voided_invoice_reaches_its_order_and_stays_a_fence() -> None:
    from state.order_status import IdRouter  # noqa: PLC0415

    router, state = IdRouter(), None
    posted = invoice()
    state, out = router.apply(state, posted)
    assert out == [posted]
    voided = Emit("canonical.invoice", "k", "x", {"invoice_id": 9, "order_id": None, "op": "delete", "source": {
        "system": "erp", "position": "ffffffffffffffff/ffffffffffffffff", "commit_ts_ms": T0 + 9}})
    state, out = router.apply(state, voided)  # a key-only delete: stamped with the order it belonged to
    assert [e.value["order_id"] for e in out] == [7]
    book_state, published = book_run([header("shipped"), order_line(2), shipment(), shipped(2), posted])
    assert statuses(published)[-1] == "invoiced"
    book_state, published = book_run(out, state=book_state)
    assert statuses(published) == ["shipped"]  # voided: back to shipped
    _, published = book_run([posted], state=book_state)
    assert published == []  # the stale upsert cannot bring it back
    assert IdRouter().apply(None, voided)[1] == []  # a delete of a row never seen: nothing to tell
