"""Availability on the live stack: a WMS UPDATE reaches Redis and availability.<channel> with the
value the spec formula gives."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from erpsync.channels import load_channels
from erpsync.schemas.registry import SchemaRegistry, make_value_deserializer
from erpsync.settings import Settings

from .conftest import Pipeline, read_to_end, unique
from .truth import redis_values, truth


def wait_for_truth(settings: Settings, store: redis.Redis, skus: list[str], timeout_s: float = 120) -> dict[Any, Any]:
    expected = truth(settings, skus)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if redis_values(store, skus) == expected:
            return expected
        time.sleep(0.2)
    assert redis_values(store, skus) == expected
    return expected


def latest_on_topics(settings: Settings, skus: set[str], since_ms: int) -> dict[tuple[str, str], int]:
    deserialize = make_value_deserializer(SchemaRegistry.load(), None)
    latest: dict[tuple[str, str], int] = {}
    for msg in read_to_end(settings, [c.topic for c in load_channels()], since_ms=since_ms):
        sku = (msg.key() or b"").decode()
        if sku in skus:
            raw = msg.value() or b""
            value = json.loads(raw) if raw[:1] == b"{" else deserialize(msg.topic() or "", raw)[1]
            latest[(value["channel"], sku)] = value["ats"]
    return latest


def seed(erp: Any, wms: Any, skus: list[str]) -> None:
    for sku in skus:
        erp.execute("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'ats test', 2)", (sku,))
    with wms.cursor() as cur:
        for sku in skus:
            cur.execute("INSERT INTO inventory_balances (sku, location, on_hand, allocated) VALUES "
                        "(%s, 'DC-EAST', 50, 5), (%s, 'DC-WEST', 20, 0)", (sku, sku))


def test_wms_update_reaches_redis_and_topics(pipeline: Pipeline, settings: Settings, erp, wms,  # type: ignore[no-untyped-def]
                                             store: redis.Redis) -> None:
    sku = unique("SKU-ATS")
    started_ms = int(time.time() * 1000) - 5000
    seed(erp, wms, [sku])
    with wms.cursor() as cur:
        cur.execute("UPDATE inventory_balances SET on_hand = 40 WHERE sku = %s AND location = 'DC-EAST'", (sku,))
    expected = wait_for_truth(settings, store, [sku])
    # (40 - 5) + 20 - safety 2 = 53 everywhere; the marketplace sees DC-EAST only, 80%: floor(33 * 0.8) = 26
    assert expected == {("b2b-portal", sku): 53, ("inside-sales", sku): 53, ("marketplace", sku): 26}
    assert latest_on_topics(settings, {sku}, started_ms) == expected
