"""Issue 10's reproduced defects, one test each, through the production dataflow (``tests.harness``).

Each runs the same source histories with the records interleaved differently (each partition's
own order kept), in different batch sizes and with 1 and 2 workers where it matters.
"""

from __future__ import annotations

from typing import Any

import pytest

from state.order_status import Slas
from tests.harness import (
    DAY0,
    World,
    allocation,
    ats,
    customer,
    dead_letters,
    emits,
    exceptions,
    finals,
    intake_row,
    interleave,
    item,
    order_line,
    price_line,
    run,
    sales_order,
    stock,
    with_ignorable,
)


def kinds(out: list[Any], state: str | None = None) -> dict[tuple[str, str], str]:
    """(kind, business key) -> final state of every exception."""
    return {(v["kind"], v["business_key"]): v["state"] for v in exceptions(out).values()
            if state is None or v["state"] == state}


def statuses(out: list[Any], channel: str = "marketplace") -> dict[str, dict[str, Any]]:
    final: dict[str, dict[str, Any]] = {}
    for e in emits(out, f"order-status.{channel}"):
        final[e.key] = e.value
    return final


def published(out: list[Any], channel: str, sku: str) -> list[int]:
    return [e.value["ats"] for e in emits(out, f"availability.{channel}") if e.key == sku]


# ----------------------------------------------------------------------------- 1. intake decides on its own time


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_1_an_order_is_decided_on_the_state_as_of_its_time(seed: int) -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(1000).channel_order("MP-1", lines=[("SKU-1", 4, "12.5000")])
    w.later(30_000)
    with w.wms():
        w.upsert("inventory_balances", stock("SKU-1", 0))
    with w.erp():
        w.upsert("customers", customer("C-1", hold=True))
    # the later changes may well come first: their partitions are read independently
    out = run(interleave(w, seed), batch=seed + 1)
    assert statuses(out)["MP-1"]["status"] == "received"
    assert [e.key for e in emits(out, "erp.order-intake")] == ["marketplace:MP-1"]
    assert not {k for k, _ in kinds(out) if k in ("credit_hold", "insufficient_stock")}


def test_1_an_order_placed_after_a_change_sees_it() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(1000)
    with w.erp():
        w.upsert("customers", customer("C-1", hold=True))
    w.later(1000).channel_order("MP-1", lines=[("SKU-1", 4, "12.5000")])
    out = run(interleave(w, 3))
    assert statuses(out)["MP-1"]["reasons"] == ["credit_hold"]


# ----------------------------------------------------------------------------- 2. exceptions and batch boundaries


def _unallocated_for_hours(w: World) -> World:
    w.catalog({"SKU-1": 10})
    with w.erp():
        w.upsert("sales_orders", sales_order(7, "MP-7"))
        w.upsert("sales_order_lines", order_line(7, 1, "SKU-1", 2))
    w.later(5 * 3600 * 1000)  # five hours later, past the four-hour allocation SLA
    with w.wms():
        w.upsert("allocations", allocation(70, 7, 1, "SKU-1", 2))
    return w


@pytest.mark.parametrize("batch", [1, 1000])
def test_2_a_deadline_armed_and_cleared_in_one_batch_is_still_evaluated_at_its_time(batch: int) -> None:
    out = run(with_ignorable(_unallocated_for_hours(World()).records(), batch), batch=batch)
    assert kinds(out).get(("allocation_sla_breach", "marketplace/MP-7")) == "resolved"


def test_2_an_order_imported_soon_after_acceptance_is_not_unconfirmed() -> None:
    for batch in (1, 7, 1000):
        w = World().catalog({"SKU-1": 10})
        w.later(500).channel_order("MP-1", lines=[("SKU-1", 2, "12.5000")])
        w.later(5000)
        with w.erp():  # the ERP imports it 5 s later
            w.upsert("sales_orders", sales_order(1, "MP-1"))
            w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 2))
        w.later(20 * 60 * 1000)  # the TTL (15 min) passes with other changes
        with w.wms():
            w.upsert("inventory_balances", stock("SKU-1", 9))
        out = run(with_ignorable(interleave(w, batch), batch), batch=batch)
        assert ("intake_unconfirmed", "marketplace/MP-1") not in kinds(out)
        assert statuses(out)["MP-1"]["status"] == "accepted"


# ----------------------------------------------------------------------------- 3. TTL


def test_3_a_reservation_past_its_ttl_expires_even_with_nothing_after_it() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 4, "12.5000")])
    out = run(w.records())
    assert kinds(out).get(("intake_unconfirmed", "marketplace/MP-1")) == "open"
    assert ats(out, "b2b-portal", "SKU-1") == 10  # released at the end of event time


def test_3_a_reservation_accepted_while_catching_up_expires_in_event_order() -> None:
    """The TTL has passed, in event time, by the time the order is decided: it expires right after."""
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 4, "12.5000")])
    w.later(16 * 60 * 1000)
    with w.wms():
        w.upsert("inventory_balances", stock("SKU-1", 11))
    out = run(interleave(w, 5), batch=1000)
    unconfirmed = [v for v in exceptions(out).values() if v["kind"] == "intake_unconfirmed"]
    assert len(unconfirmed) == 1 and unconfirmed[0]["first_seen_ms"] < max(
        e.value["event_time_ms"] for e in emits(out, "availability.b2b-portal"))
    assert ats(out, "b2b-portal", "SKU-1") == 11


# ----------------------------------------------------------------------------- 4. rows that change key


@pytest.mark.parametrize("workers", [1, 2])
def test_4_an_allocation_moved_to_another_order_leaves_the_first(workers: int) -> None:
    w = World().catalog({"SKU-1": 10})
    with w.erp():
        w.upsert("sales_orders", sales_order(7, "MP-7"))
        w.upsert("sales_order_lines", order_line(7, 1, "SKU-1", 2))
        w.upsert("sales_orders", sales_order(8, "MP-8"))
        w.upsert("sales_order_lines", order_line(8, 1, "SKU-1", 2))
    with w.wms():
        w.upsert("allocations", allocation(70, 7, 1, "SKU-1", 2))
    with w.wms():  # re-pointed to order 8
        w.upsert("allocations", allocation(70, 8, 1, "SKU-1", 2))
    out = run(interleave(w, 1), workers=workers)
    # truth: order 7 commits 2 (not allocated), order 8 commits 0 (allocated): 10 - 2 = 8... with the
    # allocated units still on hand (WMS allocated column unchanged here): ATS = 10 - 2 = 8
    assert ats(out, "b2b-portal", "SKU-1") == 8
    st = statuses(out)
    assert st["MP-7"]["lines"][0]["allocated"] == 0 and st["MP-8"]["lines"][0]["allocated"] == 2


def test_4_a_shipment_moved_to_another_order_leaves_the_first() -> None:
    w = World().catalog({"SKU-1": 10})
    with w.erp():
        for order_id in (7, 8):
            w.upsert("sales_orders", sales_order(order_id, f"MP-{order_id}"))
            w.upsert("sales_order_lines", order_line(order_id, 1, "SKU-1", 2))
    with w.wms():
        w.upsert("shipments", {"shipment_id": 90, "order_id": 7, "location": "DC-EAST", "carrier": "UPS",
                               "tracking_no": "1Z9", "status": "dispatched", "freight_cost": "5.00",
                               "shipped_at": None})
        w.upsert("shipment_lines", {"shipment_id": 90, "line_no": 1, "sku": "SKU-1", "qty": 2})
    with w.wms():  # corrected: it was order 8's
        w.upsert("shipments", {"shipment_id": 90, "order_id": 8})
    out = run(interleave(w, 2))
    st = statuses(out)
    assert st["MP-7"]["status"] == "accepted" and st["MP-7"]["tracking_numbers"] == []
    assert st["MP-8"]["status"] == "shipped" and st["MP-8"]["tracking_numbers"] == ["1Z9"]


# ----------------------------------------------------------------------------- 5. only consistent states published


def test_5_an_erp_import_never_shows_its_release_without_its_commitment() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 4, "12.5000")])
    w.later(2000)
    with w.erp():  # the import: header (releases the reservation) and line (commits 4), one transaction
        w.upsert("sales_orders", sales_order(1, "MP-1"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 4))
    for seed in range(4):
        out = run(interleave(w, seed), batch=seed + 1)
        assert published(out, "b2b-portal", "SKU-1") == [0, 10, 6]  # never 10 again in between


def test_5_two_lines_of_one_transaction_are_published_once() -> None:
    w = World().catalog({"SKU-1": 5})
    w.later(1000)
    with w.erp():
        w.upsert("sales_orders", sales_order(1, "MP-1"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 4))
        w.upsert("sales_order_lines", order_line(1, 2, "SKU-1", 4))
    out = run(interleave(w, 0), batch=1)
    assert published(out, "b2b-portal", "SKU-1") == [0, 5, 0]  # never 1


# ----------------------------------------------------------------------------- 6. oversold whatever the status


@pytest.mark.parametrize("status", ["discontinued", None])
def test_6_oversold_is_raised_whatever_the_item_status(status: str | None) -> None:
    w = World()
    with w.erp():
        if status:
            w.upsert("items", item("SKU-1", status=status))
        w.upsert("sales_orders", sales_order(1, "MP-1"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 6))
    with w.wms():
        w.upsert("inventory_balances", stock("SKU-1", 4))
    out = run(w.records())
    assert kinds(out).get(("oversold", "b2b-portal/SKU-1")) == "open"


# ----------------------------------------------------------------------------- 7. intake failed


def test_7_an_intake_the_erp_fails_is_an_exception_and_a_rejection() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 2, "12.5000")])
    w.later(1000)
    with w.erp():
        w.upsert("order_intake", intake_row("marketplace", "MP-1", {"lines": []}))
    with w.erp():
        w.upsert("order_intake", intake_row("marketplace", "MP-1", {"lines": []}, status="failed",
                                            error="customer C-1 is blocked for imports"))
    out = run(interleave(w, 1))
    failed = [v for v in exceptions(out).values() if v["kind"] == "intake_failed"]
    assert failed and "customer C-1 is blocked for imports" in failed[0]["reason"]
    assert statuses(out)["MP-1"]["status"] == "rejected" and statuses(out)["MP-1"]["reasons"] == ["intake_failed"]
    assert ats(out, "b2b-portal", "SKU-1") == 10  # its reservation is released


# ----------------------------------------------------------------------------- 8. one business time zone


def test_8_the_same_instant_gets_the_same_price_decision_whatever_the_offset() -> None:
    w = World().catalog({"SKU-1": 10})
    with w.erp():  # a new price from "tomorrow" (UTC)
        w.upsert("price_list_lines", price_line("SKU-1", "12.5000", valid_to=DAY0))
        w.upsert("price_list_lines", price_line("SKU-1", "14.0000", valid_from=DAY0 + 1))
    w.later(1000)
    # 2026-11-16T23:30:00-05:00 is 04:30 UTC on the 17th: the new price's day in UTC
    w.channel_order("MP-1", lines=[("SKU-1", 1, "14.0000")], placed_at="2026-11-16T23:30:00-05:00")
    w.channel_order("MP-2", lines=[("SKU-1", 1, "14.0000")], placed_at="2026-11-17T04:30:00+00:00")
    out = run(w.records())
    st = statuses(out)
    assert st["MP-1"]["status"] == st["MP-2"]["status"]


# ----------------------------------------------------------------------------- 9. resubmission conflicts


def test_9_a_resubmission_with_other_content_names_the_difference() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 2, "12.5000")])
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 3, "12.5000")])  # before the ERP row exists
    w.later(1000)
    with w.erp():
        w.upsert("order_intake", intake_row("marketplace", "MP-1", {
            "channel": "marketplace", "external_order_id": "MP-1", "customer_id": "C-1",
            "payment_status": "approved", "fulfillment_method": "SHIP", "currency": "USD",
            "tax_jurisdiction": "US-TX-AUSTIN", "freight_total": "5.00", "discount_total": "0.00",
            "tax_total": "1.20", "lines": [{"line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price": "12.5000"}]}))
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 2, "12.5000")], freight_total="9.00")  # after it
    out = run(interleave(w, 4))
    assert [e.key for e in emits(out, "erp.order-intake")] == ["marketplace:MP-1"]
    conflicts = [v for v in exceptions(out).values() if v["kind"] == "resubmission_conflict"]
    assert conflicts and "freight_total" in conflicts[0]["detail"]  # the last one names what differs
    reserved = {e.value["intake_reserved"] for e in emits(out, "availability.b2b-portal")}
    assert max(reserved) == 2  # reserved once (and released by the TTL at the end: the ERP never imported it)


# ----------------------------------------------------------------------------- 10. freight and overship


def _order_with(w: World, *, shipments: bool) -> World:
    w.catalog({"SKU-1": 10})
    with w.erp():
        w.upsert("sales_orders", sales_order(1, "MP-1", status="released"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 2))
    if shipments:
        with w.wms():
            w.upsert("shipments", {"shipment_id": 5, "order_id": 1, "location": "DC-EAST", "carrier": "UPS",
                                   "tracking_no": "1Z5", "status": "dispatched", "freight_cost": "5.00",
                                   "shipped_at": None})
            w.upsert("shipment_lines", {"shipment_id": 5, "line_no": 1, "sku": "SKU-1", "qty": 2})
            w.upsert("shipment_lines", {"shipment_id": 5, "line_no": 9, "sku": "SKU-9", "qty": 1})
    with w.erp():
        w.upsert("invoices", {"invoice_id": 1, "order_id": 1, "invoice_total": "30.20", "tax_total": "0.20",
                              "freight_total": "5.00", "posted_at": "2026-11-16T00:00:00Z"})
    return w


def test_10_freight_invoiced_without_shipments_is_flagged() -> None:
    out = run(_order_with(World(), shipments=False).records())
    assert kinds(out).get(("freight_discrepancy", "marketplace/MP-1")) == "open"


def test_10_shipping_a_line_not_on_the_order_is_an_overship() -> None:
    out = run(_order_with(World(), shipments=True).records())
    k = kinds(out)
    assert k.get(("overship", "marketplace/MP-1")) == "open" and ("freight_discrepancy", "marketplace/MP-1") not in k


# ----------------------------------------------------------------------------- 11. items never seen, scales


def test_11_deleting_an_item_never_seen_publishes_nothing() -> None:
    w = World()
    with w.erp():
        w.delete("items", item("SKU-GHOST"))
    out = run(w.records())
    assert emits(out, "availability.") == []


def test_11_accepted_orders_carry_money_at_the_schemas_scales() -> None:
    w = World().catalog({"SKU-1": 10})
    w.later(500).channel_order("MP-1", lines=[("SKU-1", 1, "12.5")], freight_total="5", tax_total="1.2")
    [accepted] = [e.value for e in emits(run(w.records()), "erp.order-intake")]
    assert (accepted["freight_total"], accepted["tax_total"], accepted["discount_total"]) == ("5.00", "1.20", "0.00")
    assert accepted["lines"][0]["unit_price"] == "12.5000"


# ----------------------------------------------------------------------------- 12. worker count


def test_12_a_discontinued_item_is_republished_though_its_ats_stays_zero() -> None:
    w = World().catalog({"SKU-1": 0})
    with w.erp():
        w.upsert("items", item("SKU-1", status="discontinued"))
    out = run(w.records(), workers=2)
    final = [e.value for e in emits(out, "availability.b2b-portal") if e.key == "SKU-1"][-1]
    assert (final["ats"], final["status"]) == (0, "discontinued")


def test_12_two_workers_raise_what_one_raises() -> None:
    w = World().catalog({"SKU-1": 5, "SKU-2": 5})
    for order_id in range(1, 6):
        with w.erp():
            w.upsert("sales_orders", sales_order(order_id, f"MP-{order_id}"))
            w.upsert("sales_order_lines", order_line(order_id, 1, f"SKU-{1 + order_id % 2}", 2))
        with w.wms():
            w.upsert("allocations", allocation(100 + order_id, order_id, 1, f"SKU-{1 + order_id % 2}", 2))
            w.upsert("inventory_balances", stock(f"SKU-{1 + order_id % 2}", 5, allocated=2 * (1 + order_id // 2)))
    assert finals(run(interleave(w, 1), workers=1)) == finals(run(interleave(w, 2), workers=2))


# ----------------------------------------------------------------------------- 13. exceptions resolve themselves


def test_13_a_wrong_invoice_replaced_by_a_right_one_is_raised_then_resolved() -> None:
    w = World().catalog({"SKU-1": 10})
    with w.erp():
        w.upsert("sales_orders", sales_order(1, "MP-1", total="30.20"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 2))
    with w.erp():
        w.upsert("invoices", {"invoice_id": 1, "order_id": 1, "invoice_total": "99.00", "tax_total": "0.20",
                              "freight_total": "0.00", "posted_at": "2026-11-16T00:00:00Z"})
    with w.erp():  # voided and re-issued correctly
        w.delete("invoices", {"invoice_id": 1})
        w.upsert("invoices", {"invoice_id": 2, "order_id": 1, "invoice_total": "30.20", "tax_total": "0.20",
                              "freight_total": "0.00", "posted_at": "2026-11-16T00:00:00Z"})
    results = [kinds(run(interleave(w, seed), batch=seed + 1)) for seed in range(3)]
    assert all(r == results[0] for r in results)
    assert results[0][("invoice_discrepancy", "marketplace/MP-1")] == "resolved"


def test_13_a_freight_exception_resolves_when_its_invoice_is_gone() -> None:
    w = _order_with(World(), shipments=False)
    with w.erp():
        w.delete("invoices", {"invoice_id": 1})
    out = run(w.records())
    resolved = exceptions(out)
    [freight] = [v for v in resolved.values() if v["kind"] == "freight_discrepancy"]
    assert freight["state"] == "resolved" and freight["source"]["table"] == "erp.invoices"


# ----------------------------------------------------------------------------- 14. deadlines already past


def test_14_a_return_booked_after_its_credit_sla_raises_credit_pending() -> None:
    slas = Slas(credit_ms=3600 * 1000)
    w = World().catalog({"SKU-1": 10})
    with w.erp():
        w.upsert("sales_orders", sales_order(1, "MP-1"))
        w.upsert("sales_order_lines", order_line(1, 1, "SKU-1", 2))
    w.later(2 * 3600 * 1000)
    received_us = (w.now - 2 * 3600 * 1000) * 1000  # booked now, received two hours ago: SLA already past
    with w.wms():
        w.upsert("returns", {"rma_id": "RMA-1", "order_id": 1, "line_no": 1, "sku": "SKU-1", "qty": 1,
                             "disposition": "restock", "received_at": received_us})
    w.later(1000)
    with w.erp():  # the memo follows shortly
        w.upsert("credit_memos", {"credit_memo_id": 1, "order_id": 1, "rma_id": "RMA-1", "amount": "12.50",
                                  "reason": "return", "posted_at": "2026-11-16T00:00:00Z"})
    out = run(w.records(), slas=slas)
    assert kinds(out).get(("credit_pending", "marketplace/MP-1/RMA-1")) == "resolved"
    # raised once (the timer fires a deadline armed past due at once; its clearance only resolves it)
    states = [e.value["state"] for e in emits(out, "sync.exceptions") if e.value["kind"] == "credit_pending"]
    assert states == ["open", "resolved"]


def test_no_record_is_lost() -> None:
    """Every input record ends as a canonical record, a dead letter, or ignored with a reason."""
    w = _unallocated_for_hours(World())
    records = w.records()
    out = run(records, workers=2)
    canonical = emits(out, "canonical.")
    from tests.harness import ignored  # noqa: PLC0415

    assert len(canonical) + len(dead_letters(out)) + len(ignored(out)) == len(records)
