"""Intake governance: each reason code, on its accept side and its reject side (spec section 6)."""

from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from erpsync.channels import load_channels
from state.intake import Catalog, Customer, PriceLine, parse, validate

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
        items={"SKU-1": "active", "SKU-OLD": "discontinued"},
        prices={("PL-1", "SKU-1"): [PriceLine(Decimal("11.0000"), date(2025, 1, 1), date(2025, 12, 31)),
                                    PriceLine(Decimal("12.5000"), date(2026, 1, 1), None)],
                ("PL-1", "SKU-OLD"): [PriceLine(Decimal("1.0000"), date(2020, 1, 1), None)]},
        ats={("marketplace", "SKU-1"): 5, ("b2b-portal", "SKU-1"): 5, ("inside-sales", "SKU-1"): 0,
             ("marketplace", "SKU-OLD"): 100},
    )


def check(changes: dict[str, Any], line: dict[str, Any] | None = None, channel: str = "marketplace") -> list[str]:
    doc = copy.deepcopy(GOOD)
    doc.update(changes)
    doc["channel"] = channel
    if line is not None:
        doc["lines"][0].update(line)
    order = parse(json.dumps(doc).encode())
    assert order is not None
    return validate(order, CHANNELS[channel], catalog())


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
    ({"placed_at": "2025-06-01T10:00:00Z"}, {"unit_price": "11.0000"}, "marketplace", []),  # price of that day
    ({"placed_at": "2019-06-01T10:00:00Z"}, None, "marketplace", ["price_mismatch"]),  # no line valid then
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
    order = parse(json.dumps(doc).encode())
    assert order is not None
    assert validate(order, tolerant, catalog()) == []
    doc["lines"][0]["unit_price"] = "12.5300"
    order = parse(json.dumps(doc).encode())
    assert order is not None and validate(order, tolerant, catalog()) == ["price_mismatch"]


@pytest.mark.parametrize("raw", [
    b"{not json", b"[]", b'{"channel": "marketplace"}', json.dumps({**GOOD, "lines": []}).encode(),
    json.dumps({**GOOD, "placed_at": "yesterday"}).encode(),
    json.dumps({**GOOD, "placed_at": "2026-11-27T10:00:00"}).encode(),
    json.dumps({**GOOD, "lines": [{"sku": "SKU-1"}]}).encode(), b"\xff\xfe",
])
def test_malformed_orders_do_not_parse(raw: bytes) -> None:
    assert parse(raw) is None
