"""Availability on the live stack: a WMS UPDATE reaches Redis and availability.<channel> with the
value the spec formula gives."""

from __future__ import annotations

import time

import redis

from erpsync.settings import Settings

from .conftest import Pipeline, unique
from .truth import latest_on_topics, seed, wait_for_truth


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
    assert latest_on_topics(settings, {sku}, started_ms, expected) == expected
