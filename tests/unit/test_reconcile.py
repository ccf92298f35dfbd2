"""Reconciliation's pure part: the ATS and order status recomputed from source rows, the comparisons, the KPIs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from erpsync.channels import load_channels
from erpsync.reconcile import (
    RECEIVED,
    Ats,
    ErpOrder,
    Finding,
    InventoryFacts,
    Kpis,
    Latency,
    Line,
    PendingIntake,
    Report,
    Shipment,
    add_parser,
    compare_inventory,
    compare_orders,
    compare_topics,
    expected_status,
    like_glob,
    like_regex,
    meets,
    order_discrepancies,
    order_exception_rate,
    parse_since,
    percent,
    recompute_ats,
    render,
    status_differences,
)
from state.channels import Channel

CHANNELS = {c.id: c for c in load_channels()}
B2B, MARKET, INSIDE = CHANNELS["b2b-portal"], CHANNELS["marketplace"], CHANNELS["inside-sales"]
NOW = 1_800_000_000_000
HOUR = 3_600_000


# ----------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    ("SKU-T1%", "SKU-T1-01", True),
    ("SKU-T1%", "SKU-T2-01", False),
    ("SKU-T1%", "sku-t1-01", False),  # case-sensitive, as PostgreSQL's LIKE
    ("SKU-_1", "SKU-A1", True),
    ("SKU-_1", "SKU-AB1", False),
    (r"A\%B", "A%B", True),
    (r"A\%B", "AxB", False),
    (r"A\_B", "AxB", False),
    ("A.B*", "A.B*", True),
    ("A.B*", "AxBB", False),  # regex characters are literal
    ("%", "", True),
    (None, "anything/at all", True),
])
def test_like_regex_matches_what_sql_like_matches(pattern: str | None, text: str, matches: bool) -> None:
    assert bool(like_regex(pattern).fullmatch(text)) is matches


@pytest.mark.parametrize(("pattern", "glob"), [
    (None, "*"),
    ("SKU-T1%", "SKU-T1*"),
    ("SKU-_1", "SKU-?1"),
    (r"A\%B\_", "A%B_"),
    ("A*B?[x]", r"A\*B\?\[x\]"),
])
def test_like_glob_is_the_redis_match_pattern(pattern: str | None, glob: str) -> None:
    assert like_glob(pattern) == glob


# ----------------------------------------------------------------------------- KPIs


@pytest.mark.parametrize(("accurate", "pairs", "min_pct", "ok"), [
    (10, 10, None, True),
    (0, 10, None, True),  # no threshold: never fails
    (10, 10, 100, True),
    (9, 10, 100, False),
    (9, 10, 90, True),
    (2, 3, 66.67, False),  # 66.666...% exactly, not a float that happens to round up
    (2, 3, 66.66, True),
    (0, 0, 50, False),  # nothing in scope with a threshold: a mistyped pattern must not pass
    (0, 0, None, True),
])
def test_meets_compares_accuracy_exactly(accurate: int, pairs: int, min_pct: float | None, ok: bool) -> None:
    assert meets(accurate, pairs, min_pct) is ok


def test_percent_is_none_without_a_denominator() -> None:
    assert percent(1, 3) == 33.3333
    assert percent(0, 0) is None


def test_order_exception_rate_counts_findings_rejections_and_pipeline_exceptions_once() -> None:
    keys = {"m/1", "m/2", "m/3", "m/4", "m/5"}
    findings = [Finding("invoice_discrepancy", "order", "m/1", "1", "2"),
                Finding("freight_discrepancy", "order", "m/1", "1", "2"),
                Finding("ats_mismatch_redis", "availability", "m/2", 1, 2),  # not an order
                Finding("short_shipment", "order", "m/9", {}, {})]  # not in scope
    assert order_exception_rate(keys, findings, rejected={"m/3"}, exception_keys={"m/4", "m/3"}) == (3, 5)


# ----------------------------------------------------------------------------- ATS


def facts(**kw: Any) -> InventoryFacts:
    base = InventoryFacts(items={"S": (0, "active")}, now_ms=NOW)
    for name, value in kw.items():
        setattr(base, name, value)
    return base


def ats(f: InventoryFacts, channel: Channel, sku: str = "S") -> Ats:
    every = [*CHANNELS.values(), *([] if channel.id in CHANNELS else [channel])]
    return recompute_ats(f, every, [sku])[(channel.id, sku)]


def test_free_stock_per_location_never_goes_below_zero() -> None:
    f = facts(balances={"S": {"DC-EAST": (10, 15, 0), "DC-WEST": (20, 5, 0)}})
    assert ats(f, B2B).ats == 15  # 0 + 15, not -5 + 15


def test_a_channel_sees_only_its_locations_and_its_share_exactly() -> None:
    f = facts(balances={"S": {"DC-EAST": (100, 0, 0), "DC-WEST": (50, 0, 0)}})
    assert ats(f, MARKET).ats == 80  # DC-EAST only, x 0.8
    assert ats(f, B2B).ats == 150
    share_29 = Channel(id="odd", share=0.29)
    assert ats(f, share_29).ats == 43  # floor(150 x 0.29) = floor(43.5)
    f100 = facts(balances={"S": {"DC-EAST": (100, 0, 0)}})
    assert ats(f100, share_29).ats == 29  # 100 x 0.29 in floats is 28.999...: exact fractions give 29


def test_in_transit_counts_only_where_the_channel_includes_it() -> None:
    f = facts(balances={"S": {"DC-EAST": (10, 0, 7)}})
    assert (ats(f, B2B).ats, ats(f, INSIDE).ats) == (10, 17)


def test_safety_stock_open_commitments_and_reservations_come_off_the_network() -> None:
    f = facts(items={"S": (5, "active")}, balances={"S": {"DC-EAST": (100, 10, 0)}},
              open_lines=[(1, 1, "S", 20), (1, 2, "S", 4), (2, 1, "S", 3), (3, 1, "OTHER", 50)],
              wms_allocated={(1, 1): 8, (1, 2): 9},  # line 1/2 over-allocated: commits 0, not -5
              pending_intake=[PendingIntake("marketplace", "MP-1", "S", 6, NOW - 1000)])
    a = ats(f, B2B)
    assert (a.free, a.safety_stock, a.committed_open, a.intake_reserved) == (90, 5, 12 + 0 + 3, 6)
    assert (a.network, a.ats) == (90 - 5 - 15 - 6, 64)


@pytest.mark.parametrize(("channel", "age_ms", "reserved"), [
    ("marketplace", 0, 6),
    ("marketplace", 899_999, 6),
    ("marketplace", 900_000, 0),  # the TTL (900 s) has passed: released
    ("b2b-portal", 899_999, 6),
    ("no-such-channel", 0, 0),  # the pipeline cannot have accepted it
])
def test_intake_reservations_hold_for_the_channel_ttl(channel: str, age_ms: int, reserved: int) -> None:
    f = facts(balances={"S": {"DC-EAST": (100, 0, 0)}},
              pending_intake=[PendingIntake(channel, "X-1", "S", 6, NOW - age_ms)])
    assert ats(f, B2B).intake_reserved == reserved


@pytest.mark.parametrize(("items", "status"), [({"S": (0, "discontinued")}, "discontinued"), ({}, "absent")])
def test_discontinued_or_unknown_items_have_no_ats(items: dict[str, tuple[int, str]], status: str) -> None:
    a = ats(facts(items=items, balances={"S": {"DC-EAST": (100, 0, 0)}}), B2B)
    assert (a.ats, a.status, a.network) == (0, status, 100)


def test_an_oversold_network_shows_zero() -> None:
    a = ats(facts(balances={"S": {"DC-EAST": (5, 0, 0)}}, open_lines=[(1, 1, "S", 9)]), B2B)
    assert (a.network, a.ats) == (-4, 0)


def test_every_channel_and_sku_asked_for_is_recomputed() -> None:
    got = recompute_ats(facts(), list(CHANNELS.values()), ["S", "NEW"])
    assert sorted(got) == sorted((c, s) for c in CHANNELS for s in ("S", "NEW"))


# ----------------------------------------------------------------------------- inventory comparison


def explained(value: int) -> Ats:
    return Ats(value, "active", value, value, 0, 0, 0, 0, 0, value)


def ops_row(value: int) -> dict[str, Any]:
    return {"ats": value}


@pytest.mark.parametrize(("redis_raw", "ops", "known", "expected_kinds", "accurate"), [
    ("7", 7, True, [], 1),
    ("6", 7, True, ["ats_mismatch_redis"], 0),
    ("7", 6, True, ["ats_mismatch_ops_db"], 1),
    ("x7", 7, True, ["ats_mismatch_redis"], 0),  # not an integer: never accurate
    (None, 7, True, ["missing_in_redis"], 0),
    ("7", None, True, ["missing_in_ops_db"], 1),
    ("7", None, False, [], 1),  # Redis only knows it: no ops row expected
])
def test_inventory_findings(redis_raw: str | None, ops: int | None, known: bool, expected_kinds: list[str],
                            accurate: int) -> None:
    redis_values = {"b2b-portal": {} if redis_raw is None else {"S": redis_raw}}
    ops_rows = {} if ops is None else {("b2b-portal", "S"): ops_row(ops)}
    result = compare_inventory({("b2b-portal", "S"): explained(7)}, redis_values, ops_rows,
                               {"S"} if known else set(), {"b2b-portal"})
    assert [f.kind for f in result.findings] == expected_kinds
    assert (result.pairs, result.accurate) == (1, accurate)
    for f in result.findings:
        assert (f.entity, f.business_key, f.expected) == ("availability", "b2b-portal/S", 7)


def test_an_absent_redis_value_reads_as_zero_for_accuracy_but_a_known_sku_is_still_reported() -> None:
    result = compare_inventory({("b2b-portal", "S"): explained(0), ("b2b-portal", "GONE"): explained(0)},
                               {"b2b-portal": {}}, {("b2b-portal", "S"): ops_row(0)}, {"S"}, {"b2b-portal"})
    assert (result.pairs, result.accurate) == (2, 2)
    assert [(f.kind, f.business_key) for f in result.findings] == [("missing_in_redis", "b2b-portal/S")]


def test_channels_without_redis_output_are_not_counted_for_accuracy() -> None:
    result = compare_inventory({("b2b-portal", "S"): explained(3)}, {}, {("b2b-portal", "S"): ops_row(3)},
                               {"S"}, redis_channels=set())
    assert (result.pairs, result.accurate, result.findings) == (0, 0, [])


# ----------------------------------------------------------------------------- order status


def order(status: str = "entered", **kw: Any) -> ErpOrder:
    o = ErpOrder(7, "marketplace", "MP-7", status, Decimal("100.00"),
                 lines={1: Line("S1", 2, Decimal("10.0000"), "open"), 2: Line("S2", 3, Decimal("5.0000"), "open")})
    for name, value in kw.items():
        setattr(o, name, value)
    return o


SHIPPED_ALL = {"shipments": {50: Shipment("UPS", "1Z", "dispatched", Decimal("5.00"))},
               "shipment_lines": [(50, 1, 2), (50, 2, 3)]}


@pytest.mark.parametrize(("erp_status", "facts_kw", "status"), [
    ("cancelled", {"invoices": {1: (Decimal("100.00"), Decimal(0))}}, "cancelled"),
    ("closed", {"invoices": {1: (Decimal("100.00"), Decimal(0))}}, "closed"),
    ("shipped", {"invoices": {1: (Decimal("100.00"), Decimal(0))}}, "invoiced"),
    ("shipped", SHIPPED_ALL, "shipped"),
    ("allocated", {"shipments": {50: Shipment("UPS", "1Z", "delivered", Decimal(0))},
                   "shipment_lines": [(50, 1, 2)]}, "partially_shipped"),
    ("allocated", {"shipments": {50: Shipment("UPS", "1Z", "packed", Decimal(0))},
                   "shipment_lines": [(50, 1, 2), (50, 2, 3)],
                   "allocations": [(1, 2, "picked"), (2, 3, "allocated")]}, "allocated"),  # packed is not shipped
    ("allocated", {"allocations": [(1, 2, "allocated"), (2, 2, "allocated"), (2, 1, "shipped")]}, "allocated"),
    ("allocated", {"allocations": [(1, 2, "allocated"), (2, 3, "cancelled")]}, "accepted"),
    ("on_hold", {"allocations": [(1, 2, "allocated")]}, "on_hold"),
    ("on_hold", {"allocations": [(1, 2, "allocated"), (2, 3, "allocated")]}, "allocated"),
    ("entered", {}, "accepted"),
    ("released", {}, "accepted"),
])
def test_status_follows_the_spec_precedence(erp_status: str, facts_kw: dict[str, Any], status: str) -> None:
    assert expected_status(order(erp_status, **facts_kw))["status"] == status


def test_cancelled_lines_neither_show_nor_hold_the_status_back() -> None:
    o = order("allocated", allocations=[(1, 2, "allocated")])
    o.lines[2] = Line("S2", 3, Decimal("5.0000"), "cancelled")
    got = expected_status(o)
    assert got["status"] == "allocated"
    assert got["lines"] == [{"line_no": 1, "sku": "S1", "ordered": 2, "allocated": 2, "shipped": 0}]


def test_the_expected_status_carries_lines_carriers_and_tracking_numbers() -> None:
    o = order("shipped", shipments={50: Shipment("UPS", "1Z", "dispatched", Decimal(0)),
                                    51: Shipment("DHL", None, "packed", Decimal(0))},
              shipment_lines=[(50, 1, 2), (51, 2, 3)], allocations=[(1, 2, "shipped"), (2, 3, "picked")])
    assert expected_status(o) == {
        "status": "partially_shipped", "order_id": 7,
        "lines": [{"line_no": 1, "sku": "S1", "ordered": 2, "allocated": 2, "shipped": 2},
                  {"line_no": 2, "sku": "S2", "ordered": 3, "allocated": 3, "shipped": 0}],
        "carriers": ["DHL", "UPS"], "tracking_numbers": ["1Z"]}


def test_status_differences_ignore_order_of_lines_and_carriers_but_not_values() -> None:
    exp = expected_status(order("shipped", **SHIPPED_ALL))
    told = {**exp, "lines": list(reversed(exp["lines"])), "reasons": [], "last_fact_ms": 5}
    assert status_differences(exp, told) == []
    told["lines"] = [{**exp["lines"][0], "shipped": 1}, exp["lines"][1]]
    told["status"] = "partially_shipped"
    assert status_differences(exp, told) == ["status", "lines"]


# ----------------------------------------------------------------------------- discrepancies


def kinds(found: list[Finding]) -> list[str]:
    return [f.kind for f in found]


def test_a_clean_invoiced_order_has_no_discrepancy() -> None:
    o = order("invoiced", invoices={9: (Decimal("100.00"), Decimal("5.00"))}, **SHIPPED_ALL)
    assert order_discrepancies(o, NOW, 72 * HOUR) == []


def test_invoice_and_freight_discrepancies() -> None:
    o = order("invoiced", invoices={9: (Decimal("60.00"), Decimal("7.00")), 10: (Decimal("40.01"), Decimal(0))},
              **SHIPPED_ALL)
    found = order_discrepancies(o, NOW, 72 * HOUR)
    assert [(f.kind, f.expected, f.actual) for f in found] == [
        ("invoice_discrepancy", "100.00", "100.01"), ("freight_discrepancy", "5.00", "7.00")]
    assert found[0].business_key == "marketplace/MP-7" and found[0].detail["invoice_ids"] == [9, 10]


def test_freight_billed_without_any_shipment_is_a_discrepancy() -> None:
    o = order("invoiced", invoices={9: (Decimal("100.00"), Decimal("5.00"))})
    assert "freight_discrepancy" in kinds(order_discrepancies(o, NOW, HOUR))


def test_credits_are_compared_in_cents_rounded_half_up() -> None:
    o = order("invoiced", **SHIPPED_ALL, invoices={9: (Decimal("100.00"), Decimal("5.00"))})
    o.lines[1] = Line("S1", 2, Decimal("0.1250"), "shipped")  # 1 x 0.125 = 0.13 half up (0.12 half even)
    o.returns = {"R1": (1, 1, NOW - HOUR)}
    o.credits = {30: ("R1", Decimal("0.13"))}
    assert order_discrepancies(o, NOW, HOUR) == []
    o.credits = {30: ("R1", Decimal("0.12"))}
    (f,) = order_discrepancies(o, NOW, HOUR)
    assert (f.kind, f.expected, f.actual, f.detail["rma_id"]) == ("credit_discrepancy", "0.13", "0.12", "R1")


def test_credits_for_one_return_add_up_and_a_credit_for_an_unknown_return_is_reported() -> None:
    o = order("invoiced", **SHIPPED_ALL, invoices={9: (Decimal("100.00"), Decimal("5.00"))},
              returns={"R1": (2, 2, NOW)}, credits={30: ("R1", Decimal("4.00")), 31: ("R1", Decimal("6.00")),
                                                   32: (None, Decimal("1.00")), 33: ("R9", Decimal("2.00"))})
    assert [(f.kind, f.detail["rma_id"]) for f in order_discrepancies(o, NOW, HOUR)] == [("credit_discrepancy", "R9")]


def test_a_return_without_credit_memo_is_pending_and_says_whether_the_sla_has_passed() -> None:
    o = order("invoiced", **SHIPPED_ALL, invoices={9: (Decimal("100.00"), Decimal("5.00"))},
              returns={"R1": (1, 1, NOW - 2 * HOUR), "R2": (2, 1, NOW - 10)})
    found = order_discrepancies(o, NOW, HOUR)
    assert [(f.kind, f.detail["rma_id"], f.detail["past_sla"]) for f in found] == [
        ("credit_pending", "R1", True), ("credit_pending", "R2", False)]


@pytest.mark.parametrize(("erp_status", "shipped", "expected_kinds"), [
    ("shipped", [(50, 1, 2), (50, 2, 2)], ["short_shipment"]),
    ("invoiced", [(50, 1, 2)], ["short_shipment"]),
    ("allocated", [(50, 1, 2)], []),  # still on its way: no disagreement
    ("allocated", [(50, 1, 2), (50, 2, 3)], ["status_mismatch"]),  # all dispatched, ERP behind
    ("shipped", [(50, 1, 3), (50, 2, 3)], ["overship"]),
])
def test_erp_and_wms_disagreements(erp_status: str, shipped: list[tuple[int, int, int]],
                                   expected_kinds: list[str]) -> None:
    o = order(erp_status, shipments={50: Shipment("UPS", "1Z", "dispatched", Decimal(0))}, shipment_lines=shipped)
    assert kinds(order_discrepancies(o, NOW, HOUR)) == expected_kinds


def test_a_short_shipment_names_the_line_ordered_and_shipped() -> None:
    o = order("shipped", shipments={50: Shipment("UPS", "1Z", "dispatched", Decimal(0))},
              shipment_lines=[(50, 1, 2), (50, 2, 2)])
    (f,) = order_discrepancies(o, NOW, HOUR)
    assert (f.expected, f.actual, f.detail["spec_kind"]) == ({"2": 3}, {"2": 2}, "status_mismatch")


def test_a_cancelled_order_with_live_allocations_is_a_status_mismatch() -> None:
    assert kinds(order_discrepancies(order("cancelled", allocations=[(1, 2, "picked")]), NOW, HOUR)) == [
        "status_mismatch"]
    assert order_discrepancies(order("cancelled", allocations=[(1, 2, "cancelled")]), NOW, HOUR) == []


# ----------------------------------------------------------------------------- order comparison


def published(o: ErpOrder, **changes: Any) -> dict[str, Any]:
    return {**expected_status(o), "reasons": [], "last_fact_ms": 1, "written_at": "t", **changes}


def test_compare_orders_names_each_kind_of_difference() -> None:
    same, behind, unseen = order("entered"), order("allocated"), order("entered")
    behind.external_order_id, unseen.external_order_id = "MP-8", "MP-9"
    behind.allocations = [(1, 2, "allocated"), (2, 3, "allocated")]
    elsewhere = order("entered")
    elsewhere.channel = "not-configured"
    told = {"marketplace/MP-7": published(same),
            "marketplace/MP-8": published(behind, status="accepted"),
            "marketplace/MP-R": {**RECEIVED, "status": "rejected", "reasons": ["credit_hold"]},
            "marketplace/MP-LOST": {**RECEIVED, "last_fact_ms": 1},
            "b2b-portal/PO-1": {**RECEIVED, "last_fact_ms": 1}}
    result = compare_orders([same, behind, unseen, elsewhere], {"b2b-portal/PO-1", "b2b-portal/PO-2"}, told,
                            set(CHANNELS), NOW, HOUR)
    assert sorted((f.kind, f.business_key) for f in result.findings) == [
        ("missing_order_status", "b2b-portal/PO-2"),
        ("missing_order_status", "marketplace/MP-9"),
        ("order_missing_in_erp", "marketplace/MP-LOST"),
        ("order_status_mismatch", "marketplace/MP-8"),
    ]
    mismatch = next(f for f in result.findings if f.kind == "order_status_mismatch")
    assert (mismatch.expected, mismatch.actual) == ({"status": "allocated"}, {"status": "accepted"})
    assert result.rejected == {"marketplace/MP-R"}
    assert result.keys == {"marketplace/MP-7", "marketplace/MP-8", "marketplace/MP-9", "not-configured/MP-7",
                           "marketplace/MP-R", "marketplace/MP-LOST", "b2b-portal/PO-1", "b2b-portal/PO-2"}
    assert "not-configured/MP-7" not in result.expected  # its channel publishes nothing to compare with


def test_invoice_discrepancy_rate_counts_invoices() -> None:
    good = order("invoiced", invoices={1: (Decimal("100.00"), Decimal("5.00"))}, **SHIPPED_ALL)
    bad = order("invoiced", invoices={2: (Decimal("50.00"), Decimal("5.00")), 3: (Decimal("40.00"), Decimal(0))},
                **SHIPPED_ALL)
    bad.external_order_id = "MP-8"
    result = compare_orders([good, bad], set(), {}, set(), NOW, HOUR)
    assert (result.invoices, result.invoices_with_discrepancy) == (3, 2)


def test_compare_topics_uses_only_keys_seen_in_the_tail() -> None:
    exp = {("marketplace", "S"): explained(5), ("marketplace", "T"): explained(6), ("marketplace", "U"): explained(1)}
    status = {"marketplace/MP-7": expected_status(order("entered"))}
    latest = {("availability.marketplace", "S"): {"ats": 5}, ("availability.marketplace", "T"): {"ats": 4},
              ("availability.marketplace", "U"): None,  # tombstone
              ("order-status.marketplace", "MP-7"): {**status["marketplace/MP-7"], "status": "received"}}
    found = compare_topics(latest, exp, status, [MARKET])
    assert [(f.kind, f.business_key, f.expected, f.actual) for f in found] == [
        ("ats_mismatch_topic", "marketplace/T", 6, 4), ("ats_mismatch_topic", "marketplace/U", 1, None),
        ("order_status_mismatch_topic", "marketplace/MP-7", {"status": "accepted"}, {"status": "received"})]


# ----------------------------------------------------------------------------- report and command


def report(accurate: int = 9, pairs: int = 10, min_pct: float | None = None) -> Report:
    lat = {"availability": Latency(3, 10.0, 20.0), "order_status": Latency(0, None, None),
           "all": Latency(3, 10.0, 20.0)}
    kpis = Kpis(pairs, accurate, percent(accurate, pairs), 4, 1, 25.0, 2, 1, 50.0, lat, {"oversold": 2})
    findings = [Finding("ats_mismatch_redis", "availability", "marketplace/S", 5, 4,
                        {"recomputed": asdict(explained(5)), "ops_db": None}),
                Finding("invoice_discrepancy", "order", "marketplace/MP-7", "100.00", "99.00", {"order_id": 7})]
    when = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return Report({"skus": "S%", "orders": None, "since_ms": None, "topic_records": None,
                   "channels": ["marketplace"]}, when, when, kpis, findings, ["a note"], min_pct)


def test_report_json_has_kpis_findings_by_kind_and_the_verdict() -> None:
    doc = json.loads(report(min_pct=95).to_json())
    assert doc["kpis"]["inventory_accuracy_pct"] == 90.0
    assert doc["kpis"]["sync_latency_ms"]["availability"] == {"count": 3, "p50_ms": 10.0, "p99_ms": 20.0}
    assert doc["findings_by_kind"] == {"ats_mismatch_redis": 1, "invoice_discrepancy": 1}
    assert doc["findings"][1]["business_key"] == "marketplace/MP-7"
    assert (doc["min_accuracy_pct"], doc["passed"]) == (95, False)
    assert json.loads(report(min_pct=90).to_json())["passed"] is True


def test_render_groups_findings_by_kind_and_shows_every_kpi() -> None:
    text = render(report(min_pct=95))
    for expected in ("inventory accuracy", "90.00%", "9 of 10", "order exception rate", "25.00%",
                     "invoice discrepancy rate", "10 / 20 ms", "oversold 2", "FAILED",
                     "ats_mismatch_redis (1)", "invoice_discrepancy (1)", "marketplace/MP-7", "note: a note"):
        assert expected in text, expected
    assert text.index("ats_mismatch_redis (1)") < text.index("invoice_discrepancy (1)")


@pytest.mark.parametrize(("text", "ms"), [
    ("1795797697026", 1795797697026),
    ("2026-11-27T10:00:00Z", int(datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-27T12:00:00+02:00", int(datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-27T10:00:00", int(datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp() * 1000)),  # naive: UTC
])
def test_since_takes_epoch_ms_or_iso_times(text: str, ms: int) -> None:
    assert parse_since(text) == ms


def test_since_rejects_anything_else() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday")


def test_the_command_line() -> None:
    parser = argparse.ArgumentParser(prog="erpsync")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reconcile", "--skus", "SKU-T1%", "--orders", "T1-%", "--since", "1000", "--json",
                              "--min-accuracy", "99.5", "--topics"])
    assert (args.skus, args.orders, args.since, args.json, args.min_accuracy, args.topics, args.topic_records) == (
        "SKU-T1%", "T1-%", 1000, True, 99.5, True, 100_000)
    defaults = parser.parse_args(["reconcile"])
    assert (defaults.skus, defaults.min_accuracy, defaults.topics, defaults.no_store) == (None, None, False, False)
    assert callable(defaults.func)


def test_the_reference_channels_are_what_these_tests_assume() -> None:
    assert (MARKET.locations, MARKET.share, B2B.locations, B2B.share, INSIDE.include_in_transit) == (
        ("DC-EAST",), 0.8, None, 1.0, True)
    assert MARKET.intake.intake_ttl_s == B2B.intake.intake_ttl_s == 900
