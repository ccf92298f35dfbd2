"""Order status from all facts, in the spec's precedence (section 7): every transition."""

from __future__ import annotations

import itertools
import json
from typing import Any

from state.intake import IntakeDecision
from state.order_status import OrderFacts, derive
from state.records import Emit

POS = itertools.count(1)


def fact(topic: str, key: list[Any], value: dict[str, Any], *, position: int | None = None,
         delete: bool = False) -> Emit:
    pos = next(POS) if position is None else position
    return Emit(topic, json.dumps(key), "x", {**value, "op": "delete" if delete else "upsert", "source": {
        "system": "erp", "position": f"{pos:016x}/{pos:016x}", "commit_ts_ms": 1000 + pos}})


def order(status: str) -> Emit:
    return fact("canonical.order", [7], {"order_id": 7, "status": status, "channel": "marketplace",
                                         "external_order_id": "MP-7"})


def line(no: int, qty: int, status: str = "open") -> Emit:
    return fact("canonical.order-line", [7, no], {"order_id": 7, "line_no": no, "sku": f"SKU-{no}", "qty": qty,
                                                   "status": status})


def allocation(alloc_id: int, no: int, qty: int, status: str = "allocated") -> Emit:
    return fact("canonical.allocation", [alloc_id], {"allocation_id": alloc_id, "order_id": 7, "line_no": no,
                                                    "qty": qty, "status": status})


def shipment(ship_id: int, status: str, tracking: str = "1Z1") -> Emit:
    return fact("canonical.shipment", [ship_id], {"shipment_id": ship_id, "order_id": 7, "carrier": "UPS",
                                                 "tracking_no": tracking, "status": status})


def shipment_line(ship_id: int, no: int, qty: int) -> Emit:
    return fact("canonical.shipment-line", [ship_id, no], {"shipment_id": ship_id, "line_no": no, "qty": qty})


def status_after(*events: Emit | IntakeDecision) -> dict[str, Any] | None:
    facts = OrderFacts()
    for e in events:
        facts.apply(e, e.event_ms if isinstance(e, IntakeDecision) else e.value["source"]["commit_ts_ms"])
    return derive(facts, "marketplace", "MP-7")


ACCEPTED = IntakeDecision("marketplace", "MP-7", (), 1000)


def test_nothing_known_shows_nothing() -> None:
    assert status_after() is None


def test_the_order_walks_received_to_closed() -> None:
    walk: list[tuple[list[Emit | IntakeDecision], str]] = [
        ([ACCEPTED], "received"),
        ([order("entered")], "accepted"),
        ([line(1, 3), line(2, 2), allocation(1, 1, 3)], "accepted"),  # line 2 not covered yet
        ([allocation(2, 2, 2)], "allocated"),
        ([shipment(1, "packed"), shipment_line(1, 1, 3)], "allocated"),  # packed is not shipped
        ([shipment(1, "dispatched")], "partially_shipped"),
        ([shipment(2, "dispatched", "1Z2"), shipment_line(2, 2, 2)], "shipped"),
        ([fact("canonical.invoice", [9], {"invoice_id": 9, "order_id": 7})], "invoiced"),
        ([order("closed")], "closed"),
    ]
    seen: list[Emit | IntakeDecision] = []
    for events, want in walk:
        seen += events
        got = status_after(*seen)
        assert got is not None and got["status"] == want, (want, got)
    final = status_after(*seen)
    assert final is not None
    assert final["lines"] == [{"line_no": 1, "sku": "SKU-1", "ordered": 3, "allocated": 3, "shipped": 3},
                              {"line_no": 2, "sku": "SKU-2", "ordered": 2, "allocated": 2, "shipped": 2}]
    assert final["carriers"] == ["UPS"] and final["tracking_numbers"] == ["1Z1", "1Z2"]
    assert final["order_id"] == 7


def test_cancelled_wins_over_everything() -> None:
    got = status_after(order("entered"), line(1, 1), allocation(1, 1, 1),
                       fact("canonical.invoice", [9], {"invoice_id": 9, "order_id": 7}), order("cancelled"))
    assert got is not None and got["status"] == "cancelled"


def test_on_hold_below_allocated() -> None:
    assert status_after(order("on_hold"), line(1, 2))["status"] == "on_hold"  # type: ignore[index]
    assert status_after(order("on_hold"), line(1, 2), allocation(1, 1, 2))["status"] == "allocated"  # type: ignore[index]


def test_cancelled_allocations_and_lines_do_not_count() -> None:
    assert status_after(order("entered"), line(1, 2), allocation(1, 1, 2, "cancelled"))["status"] == "accepted"  # type: ignore[index]
    # a cancelled line needs no stock: the open one decides
    assert status_after(order("entered"), line(1, 2), line(2, 5, "cancelled"),
                        allocation(1, 1, 2))["status"] == "allocated"  # type: ignore[index]


def test_rejected_carries_every_reason() -> None:
    got = status_after(IntakeDecision("marketplace", "MP-7", ("credit_hold", "price_mismatch"), 5))
    assert got is not None and got["status"] == "rejected" and got["reasons"] == ["credit_hold", "price_mismatch"]
    assert got["order_id"] is None


def test_stale_facts_are_ignored() -> None:
    facts = OrderFacts()
    assert facts.apply(order("released"), 2000)
    assert not facts.apply(fact("canonical.order", [7], {"order_id": 7, "status": "entered", "channel": "x",
                                                          "external_order_id": "MP-7"}, position=1), 2001)
    got = derive(facts, "marketplace", "MP-7")
    assert got is not None and got["status"] == "accepted"
    assert facts.header is not None and facts.header[2] == "released"


def test_the_newest_status_fact_time_is_visible_and_order_independent() -> None:
    entered, released = order("entered"), order("released")
    a, b = status_after(entered), status_after(entered, released)  # status stays "accepted"; a newer fact time
    assert a is not None and b is not None and a["status"] == b["status"] == "accepted"
    assert a != b  # the channel learns its view is current as of the newer fact
    ret = fact("canonical.return", [1], {"rma_id": "R1", "order_id": 7, "line_no": 1, "qty": 1})
    assert status_after(entered, released, ret) == b  # a return is not a status fact
    events = [order("entered"), line(1, 2), allocation(1, 1, 2), shipment(1, "dispatched"), shipment_line(1, 1, 2)]
    assert status_after(*events) == status_after(*reversed(events)) == status_after(*events[2:], *events[:2])
