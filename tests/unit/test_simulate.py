"""The reference workload's pure part: reproducible orders, planned faults, spec-shaped JSON."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from erpsync.channels import load_channels
from erpsync.settings import Settings
from erpsync.simulate import (
    DOWNSTREAM_FAULTS,
    DUPLICATE,
    INTAKE_FAULTS,
    OrderPlan,
    Scenario,
    StockExhausted,
    Workload,
    parse_intake_payload,
    split_cents,
)
from state.intake import Catalog, Customer, parse, validate

START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CHANNELS = {c.id: c for c in load_channels()}
ORDER_FIELDS = {"channel", "external_order_id", "customer_id", "payment_status", "tax_jurisdiction",
                "fulfillment_method", "currency", "placed_at", "freight_total", "discount_total", "tax_total",
                "lines"}


def scenario(seed: int = 7, n: int = 300, **kwargs: Any) -> Scenario:
    sc = Scenario(seed, "T1", start=START, **kwargs)
    sc.plan_orders(n)
    return sc


def test_the_same_seed_gives_the_same_catalog_orders_and_manifest() -> None:
    a, b = scenario(), scenario()
    assert a.catalog == b.catalog
    assert [p.doc for p in a.plans.values()] == [p.doc for p in b.plans.values()]
    assert a.plans == b.plans  # downstream faults, returns, carriers too
    assert a.manifest.to_json() == b.manifest.to_json()


def test_planning_in_batches_continues_the_same_sequence() -> None:
    whole = scenario(n=40)
    batches = Scenario(7, "T1", start=START)
    batches.plan_orders(15)
    batches.plan_orders(25)
    assert list(batches.plans.values()) == list(whole.plans.values())


def test_different_seeds_differ() -> None:
    a, b = scenario(seed=1, n=50), scenario(seed=2, n=50)
    assert [p.doc for p in a.plans.values()] != [p.doc for p in b.plans.values()]
    assert a.manifest.orders != b.manifest.orders


def test_ids_carry_the_tag() -> None:
    sc = scenario(n=50)
    assert all(c.customer_id.startswith("C-T1-") for c in sc.catalog.customers)
    assert all(i.sku.startswith("SKU-T1-") for i in sc.catalog.items)
    for plan in sc.plans.values():
        assert plan.doc["external_order_id"].startswith("T1-")
        assert plan.key == f"{plan.doc['channel']}:{plan.doc['external_order_id']}"
        assert all(line["sku"].startswith("SKU-T1-") for line in plan.doc["lines"])


@pytest.mark.parametrize("tag", ["", "A", "has-dash", "under_score", "X" * 17])
def test_a_tag_must_be_short_letters_and_digits(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        Scenario(1, tag, start=START)


@pytest.mark.parametrize("rate", [0.0, 0.15, 0.4])
def test_the_share_of_faulty_orders_follows_the_fault_rate(rate: float) -> None:
    sc = scenario(seed=3, n=2000, fault_rate=rate, max_orders=2000)
    faults = [f for f in sc.manifest.orders.values() if f is not None]
    assert abs(len(faults) / 2000 - rate) < 0.03
    if rate:
        assert set(faults) == set(INTAKE_FAULTS)  # every kind shows up in a run this size


def test_every_order_has_the_spec_shape() -> None:
    for plan in scenario(n=200).plans.values():
        doc = plan.doc
        assert set(doc) == ORDER_FIELDS
        assert doc["channel"] in CHANNELS
        assert doc["currency"] == "USD"
        assert doc["fulfillment_method"] in {"SHIP", "PICKUP", "DROPSHIP"}
        placed = datetime.fromisoformat(doc["placed_at"])
        assert placed.tzinfo is not None
        assert doc["placed_at"].endswith("Z") or doc["placed_at"][-6] in "+-"
        for name in ("freight_total", "discount_total", "tax_total"):
            assert isinstance(doc[name], str) and Decimal(doc[name]).as_tuple().exponent == -2
        assert [line["line_no"] for line in doc["lines"]] == list(range(1, len(doc["lines"]) + 1))
        for line in doc["lines"]:
            assert type(line["qty"]) is int and line["qty"] > 0
            assert isinstance(line["unit_price"], str) and Decimal(line["unit_price"]).as_tuple().exponent == -4
        assert json.loads(json.dumps(doc)) == doc


def test_orders_are_placed_in_order_after_the_start() -> None:
    times = [datetime.fromisoformat(p.doc["placed_at"]) for p in scenario(n=100).plans.values()]
    assert times == sorted(times) and times[0] > START


def test_normal_orders_pay_the_price_list_price() -> None:
    sc = scenario(n=300)
    customers = {c.customer_id: c for c in sc.catalog.customers}
    normal = [p for p in sc.plans.values() if p.fault is None]
    assert len(normal) > 200
    for plan in normal:
        customer = customers[plan.doc["customer_id"]]
        assert not customer.credit_hold
        assert plan.doc["tax_jurisdiction"] or customer.tax_jurisdiction
        for line in plan.doc["lines"]:
            assert sc.catalog.item(line["sku"]).status == "active"
            assert line["unit_price"] == f"{sc.catalog.price(customer.price_list_id, line['sku']):.4f}"


def test_a_price_mismatch_is_off_the_list_price_by_more_than_the_tolerance() -> None:
    sc = scenario(seed=5, n=600)
    mismatches = [p for p in sc.plans.values() if p.fault == "price_mismatch"]
    assert mismatches
    for plan in mismatches:
        line = plan.doc["lines"][plan.detail["line_no"] - 1]
        off = abs(Decimal(line["unit_price"]) - Decimal(plan.detail["list_price"]))
        assert off > CHANNELS[plan.doc["channel"]].intake.price_tolerance
        assert Decimal(line["unit_price"]) > 0


def _intake_catalog(sc: Scenario, day: date) -> Catalog:
    """The customers, items and the prices valid on `day` (what the network step answers with)."""
    prices: dict[tuple[str, str], tuple[date, Decimal]] = {}
    for p in sc.catalog.prices:
        if p.valid_from <= day and (p.valid_to is None or day <= p.valid_to):
            best = prices.get((p.price_list_id, p.sku))
            if best is None or p.valid_from > best[0]:
                prices[(p.price_list_id, p.sku)] = (p.valid_from, p.unit_price)
    return Catalog(
        customers={c.customer_id: Customer(c.customer_id, c.price_list_id, c.credit_hold, c.tax_jurisdiction)
                   for c in sc.catalog.customers},
        items={i.sku: i.status for i in sc.catalog.items}, prices={k: v for k, (_, v) in prices.items()})


def test_each_order_fails_exactly_its_planned_rule_under_the_intake_rules() -> None:
    """Replays the submissions through the intake rules with ATS counting earlier accepted orders."""
    sc = scenario(seed=11, n=800, max_orders=800)
    catalogs: dict[date, Catalog] = {}
    demand: Counter[str] = Counter()
    seen: set[str] = set()
    for plan in Scenario.submissions(list(sc.plans.values())):
        if plan.key in seen:
            assert plan.fault == DUPLICATE  # the resend: the pipeline ignores it
            continue
        seen.add(plan.key)
        channel = CHANNELS[plan.doc["channel"]]
        order = parse(json.dumps(plan.doc).encode())
        day = date(1970, 1, 1) + timedelta(days=order.day)
        catalog = catalogs.setdefault(day, _intake_catalog(sc, day))
        for item in sc.catalog.items:
            network = (sc.catalog.on_hand(item.sku, channel) - item.safety_stock - demand[item.sku])
            catalog.ats[(channel.id, item.sku)] = max(0, int(network * channel.share_exact)) \
                if item.status == "active" else 0
        reasons = validate(order, channel, catalog)
        assert reasons == ([] if plan.accepted else [plan.fault]), plan.key
        if not reasons:
            demand.update({line["sku"]: line["qty"] for line in plan.doc["lines"]})
    assert seen == set(sc.manifest.orders)


def test_a_duplicate_is_sent_again_a_few_orders_later() -> None:
    sc = scenario(seed=4, n=400)
    plans = list(sc.plans.values())
    sent = [p.key for p in Scenario.submissions(plans)]
    duplicates = [p for p in plans if p.fault == DUPLICATE]
    assert duplicates
    assert len(sent) == len(plans) + len(duplicates)
    for plan in duplicates:
        first, second = (i for i, key in enumerate(sent) if key == plan.key)
        assert 1 <= second - first <= plan.resend_after + 1 + len(duplicates)
    assert Counter(sent) == Counter([p.key for p in plans] + [p.key for p in duplicates])


def test_downstream_faults_and_returns_go_to_accepted_orders_only() -> None:
    sc = scenario(seed=9, n=2000, downstream_fault_rate=0.2, return_rate=0.2, import_failure_rate=0.02,
                  max_orders=2000)
    plans = list(sc.plans.values())
    downstream = Counter(p.downstream for p in plans if p.downstream)
    assert set(downstream) == set(DOWNSTREAM_FAULTS) | {"import_failed"}
    for plan in plans:
        if plan.downstream is not None:
            assert plan.fault is None  # at most one deliberate fault per order
        if plan.return_plan is not None:
            assert plan.accepted and plan.downstream in (None, "credit_pending", "credit_discrepancy")
            line = plan.doc["lines"][plan.return_plan.line_no - 1]
            assert 1 <= plan.return_plan.qty <= line["qty"]
        if plan.downstream in ("credit_pending", "credit_discrepancy"):
            assert plan.return_plan is not None
    clean = [p for p in plans if p.fault is None]
    assert abs(sum(1 for p in clean if p.downstream and p.downstream != "import_failed") / len(clean) - 0.2) < 0.04


def test_no_downstream_faults_when_the_rates_are_zero() -> None:
    sc = scenario(n=300, downstream_fault_rate=0, return_rate=0)
    assert all(p.downstream is None and p.return_plan is None for p in sc.plans.values())


def test_the_stock_is_sized_for_max_orders_and_says_so_when_it_runs_out() -> None:
    scenario(seed=2, n=1000, max_orders=1000)  # enough for the promised number of orders
    sc = Scenario(2, "T1", start=START, max_orders=10)
    with pytest.raises(StockExhausted):
        sc.plan_orders(5000)


def test_the_manifest_serializes_and_summarizes() -> None:
    sc = scenario(n=100)
    doc = json.loads(sc.manifest.to_json())
    assert doc["tag"] == "T1" and doc["seed"] == 7 and len(doc["orders"]) == 100
    summary = sc.manifest.summary()
    assert sum(summary["by_channel"].values()) == 100
    assert sum(summary["intake_faults"].values()) == sum(1 for f in sc.manifest.orders.values() if f)
    assert summary["imported"] == 0 and summary["drained"] is False
    assert set(sc.manifest.expected_rejections()) | set(sc.manifest.expected_accepted()) == set(sc.manifest.orders)
    assert DUPLICATE not in sc.manifest.expected_rejections().values()


def test_split_cents_adds_up_exactly() -> None:
    assert split_cents(Decimal("10.00"), 3) == [Decimal("3.34"), Decimal("3.33"), Decimal("3.33")]
    assert sum(split_cents(Decimal("29.95"), 2)) == Decimal("29.95")
    assert split_cents(Decimal("0"), 2) == [Decimal(0), Decimal(0)]


def _first(sc: Scenario) -> OrderPlan:
    return next(iter(sc.plans.values()))


def test_the_erp_import_reads_the_payload_leniently() -> None:
    doc = dict(_first(scenario(n=1)).doc)
    strict = parse_intake_payload(doc)
    merchandise = sum(line["qty"] * Decimal(line["unit_price"]) for line in doc["lines"])
    assert strict.merchandise_total == merchandise.quantize(Decimal("0.01"))
    assert strict.order_total == (strict.merchandise_total - Decimal(doc["discount_total"])
                                  + Decimal(doc["freight_total"]) + Decimal(doc["tax_total"]))
    # what the pipeline may write instead: micros for placed_at, numbers, a JSON string, no totals
    loose = {**doc, "placed_at": 1_795_774_800_000_000, "tax_jurisdiction": "",
             "lines": [{**line, "unit_price": float(line["unit_price"])} for line in doc["lines"]]}
    del loose["discount_total"]
    parsed = parse_intake_payload(json.dumps(loose))
    assert parsed.tax_jurisdiction is None and parsed.discount_total == Decimal("0.00")
    assert parsed.merchandise_total == strict.merchandise_total


@pytest.mark.parametrize("payload", ['"just a string"', {"customer_id": "C"}, {"customer_id": "C", "lines": []},
                                     {"customer_id": "C", "lines": [{"line_no": 1, "sku": "S", "qty": 0,
                                                                     "unit_price": "1"}]},
                                     {"customer_id": "C", "lines": [{"line_no": 1, "sku": "S", "qty": 1,
                                                                     "unit_price": "abc"}]}])
def test_a_payload_that_is_not_an_order_fails_the_import(payload: Any) -> None:
    with pytest.raises(ValueError):
        parse_intake_payload(payload)


def test_a_workload_connects_only_when_it_needs_to() -> None:
    work = Workload(Settings(), 7, "T1", start=START)
    work.scenario.plan_orders(20)
    assert work.systems._erp_conn is None and work.systems._wms_conn is None and work.storefront._producer is None
    assert work.manifest is work.scenario.manifest and len(work.manifest.orders) == 20


def test_an_order_is_finished_once_invoiced_and_its_return_credited() -> None:
    work = Workload(Settings(), 9, "T1", start=START, return_rate=1.0, fault_rate=0, downstream_fault_rate=0)
    work.scenario.plan_orders(1)
    plan = _first(work.scenario)
    assert plan.return_plan is not None and not work.finished(plan.key)
    work.manifest.stages[plan.key] = "shipped"
    assert not work.finished(plan.key) and not work.drained()
    work.manifest.stages[plan.key] = "invoiced"
    work.manifest.returns[plan.key] = "RMA-T1-000001"
    assert not work.finished(plan.key)
    work.manifest.credits[plan.key] = 1
    assert work.finished(plan.key) and work.drained()
