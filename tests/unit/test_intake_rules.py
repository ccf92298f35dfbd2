"""Intake governance: each reason code, on its accept side and its reject side (spec section 6)."""

from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from erpsync.channels import load_channels
from state.intake import Catalog, Customer, Malformed, parse, validate

CHANNELS = {c.id: c for c in load_channels()}
GOOD: dict[str, Any] = {
    "channel": "marketplace", "external_order_id": "MP-1001", "customer_id": "C-000123",
    "payment_status": "approved", "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP",
    "currency": "USD", "placed_at": "2026-11-27T10:00:00Z", "freight_total": "5.00",
    "discount_total": "0.00", "tax_total": "1.20",
    "lines": [{"line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price": "12.5000"}],
}


def catalog() -> Catalog:
    return Catalog(
        customers={"C-000123": Customer("C-000123", "PL-1", False, "US-TX-AUSTIN"),
                   "C-HOLD": Customer("C-HOLD", "PL-1", True, "US-TX-AUSTIN"),
                   "C-NOTAX": Customer("C-NOTAX", "PL-1", False, None)},
        items={"SKU-1": "active", "SKU-OLD": "discontinued", "SKU-NOPRICE": "active"},
        # the price valid on the order's date, as the SKU's network step answers it
        prices={("PL-1", "SKU-1"): Decimal("12.5000"), ("PL-1", "SKU-OLD"): Decimal("1.0000")},
        ats={("marketplace", "SKU-1"): 5, ("b2b-portal", "SKU-1"): 5, ("inside-sales", "SKU-1"): 0,
             ("marketplace", "SKU-OLD"): 100},
    )


def check(changes: dict[str, Any], line: dict[str, Any] | None = None, channel: str = "marketplace") -> list[str]:
    doc = copy.deepcopy(GOOD)
    doc.update(changes)
    doc["channel"] = channel
    if line is not None:
        doc["lines"][0].update(line)
    return validate(parse(json.dumps(doc).encode()), CHANNELS[channel], catalog())


def test_a_good_order_is_accepted() -> None:
    assert check({}) == []


@pytest.mark.parametrize(("changes", "line", "channel", "reasons"), [
    ({"customer_id": "C-NOBODY"}, None, "marketplace", ["unknown_customer"]),
    ({"customer_id": "C-HOLD"}, None, "marketplace", ["credit_hold"]),
    ({"payment_status": "pending"}, None, "marketplace", ["payment_not_approved"]),
    ({"payment_status": "terms"}, None, "marketplace", ["payment_not_approved"]),  # no terms there
    ({"payment_status": "terms"}, None, "b2b-portal", []),  # terms allowed
    ({"tax_jurisdiction": ""}, None, "marketplace", []),  # the customer's jurisdiction fills in
    ({"tax_jurisdiction": "", "customer_id": "C-NOTAX"}, None, "marketplace", ["missing_tax_jurisdiction"]),
    ({"tax_jurisdiction": None, "customer_id": "C-NOTAX"}, None, "marketplace", ["missing_tax_jurisdiction"]),
    ({"fulfillment_method": "TELEPORT"}, None, "marketplace", ["invalid_fulfillment_method"]),
    ({"fulfillment_method": "PICKUP"}, None, "marketplace", []),
    ({}, {"sku": "SKU-NONE"}, "marketplace", ["unknown_sku", "price_mismatch", "insufficient_stock"]),
    ({}, {"sku": "SKU-OLD", "unit_price": "1.0000"}, "marketplace", ["inactive_sku"]),
    ({}, {"unit_price": "12.5100"}, "marketplace", ["price_mismatch"]),
    ({}, {"sku": "SKU-NOPRICE"}, "marketplace", ["price_mismatch", "insufficient_stock"]),  # no price that day
    ({}, {"qty": 0}, "marketplace", ["invalid_quantity"]),
    ({}, {"qty": 1.5}, "marketplace", ["invalid_quantity"]),
    ({}, {"qty": "2"}, "marketplace", ["invalid_quantity"]),
    ({}, {"qty": 6}, "marketplace", ["insufficient_stock"]),
    ({}, {"qty": 5}, "marketplace", []),  # exactly the ATS
    ({}, {"qty": 6}, "inside-sales", []),  # backorders allowed
    ({"customer_id": "C-HOLD", "payment_status": "pending", "fulfillment_method": "X"}, {"qty": 9}, "marketplace",
     ["credit_hold", "payment_not_approved", "invalid_fulfillment_method", "insufficient_stock"]),
])
def test_reason_codes(changes: dict[str, Any], line: dict[str, Any] | None, channel: str,
                      reasons: list[str]) -> None:
    assert check(changes, line, channel) == reasons


def test_price_tolerance_is_the_channels() -> None:
    tolerant = CHANNELS["marketplace"].model_copy(update={"intake": CHANNELS["marketplace"].intake.model_copy(
        update={"price_tolerance": Decimal("0.02")})})
    doc = copy.deepcopy(GOOD)
    doc["lines"][0]["unit_price"] = "12.5200"
    assert validate(parse(json.dumps(doc).encode()), tolerant, catalog()) == []
    doc["lines"][0]["unit_price"] = "12.5300"
    assert validate(parse(json.dumps(doc).encode()), tolerant, catalog()) == ["price_mismatch"]


@pytest.mark.parametrize("raw", [
    b"{not json", b"[]", b'{"channel": "marketplace"}', json.dumps({**GOOD, "lines": []}).encode(),
    json.dumps({**GOOD, "placed_at": "yesterday"}).encode(),
    json.dumps({**GOOD, "placed_at": "2026-11-27T10:00:00"}).encode(),
    json.dumps({**GOOD, "lines": [{"sku": "SKU-1"}]}).encode(), b"\xff\xfe",
])
def test_malformed_orders_do_not_parse(raw: bytes) -> None:
    with pytest.raises(Malformed):
        parse(raw)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("unit_price", 213.3000000000000000000000000000000000001, "lines[0].unit_price"),  # a JSON number, 40 places
    ("unit_price", "213.30000000000000000000000000000000000001", "lines[0].unit_price"),
    ("unit_price", "12.50001", "lines[0].unit_price"),  # five places: the ERP column has four
    ("freight_total", "5.0000000000000000000000000000000000000001", "freight_total"),
    ("tax_total", "1.201", "tax_total"),
])
def test_numbers_are_exact_and_at_the_erps_scale(field: str, value: Any, named: str) -> None:
    doc = copy.deepcopy(GOOD)
    if field == "unit_price":
        doc["lines"][0]["unit_price"] = value
    else:
        doc[field] = value
    raw = json.dumps(doc).encode()
    if isinstance(value, float):  # write the number as the channel did, not as Python's float repr
        raw = raw.replace(json.dumps(value).encode(), b"213.3000000000000000000000000000000000001")
    with pytest.raises(Malformed, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse(raw)


def test_json_numbers_are_read_as_decimals_not_floats() -> None:
    raw = json.dumps(GOOD).replace('"12.5000"', "12.5000").replace('"5.00"', "5.10").encode()
    order = parse(raw)
    assert order.lines[0]["unit_price"] == Decimal("12.5000") and order.doc["freight_total"] == Decimal("5.10")
    assert validate(order, CHANNELS["marketplace"], catalog()) == []


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    deep = b'{"channel": "marketplace", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(Malformed, match="nested deeper"):
        parse(deep)


def test_business_date_is_taken_in_the_business_time_zone() -> None:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    doc = {**GOOD, "placed_at": "2026-11-27T23:30:00-05:00"}  # 04:30 UTC on the 28th
    utc = parse(json.dumps(doc).encode())
    new_york = parse(json.dumps(doc).encode(), zone=ZoneInfo("America/New_York"))
    assert (utc.day, new_york.day) == ((date(2026, 11, 28) - date(1970, 1, 1)).days,
                                       (date(2026, 11, 27) - date(1970, 1, 1)).days)
    same_instant = parse(json.dumps({**GOOD, "placed_at": "2026-11-28T04:30:00Z"}).encode())
    assert same_instant.day == utc.day  # one instant, one date, whatever offset the channel wrote
