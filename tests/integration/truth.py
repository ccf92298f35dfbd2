"""ATS recomputed straight from the systems of record (SQL), with the tests' independent formula."""

from __future__ import annotations

from typing import Any

import psycopg
import pymysql

from erpsync.settings import Settings
from tests.unit.test_ats_properties import CHANNELS, World, expected_ats


def world_from_sources(settings: Settings, skus: list[str]) -> World:
    """The final rows for `skus` (no channel intakes are involved in these tests)."""
    w = World()
    e, m = settings.erp, settings.wms
    with psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                         password=e.password.get_secret_value()) as erp:
        for sku, safety, status in erp.execute(
                "SELECT sku, safety_stock, status FROM erp.items WHERE sku = ANY(%s)", (skus,)):
            w.items[sku] = (safety, status)
        for order_id, status, ext in erp.execute(
                "SELECT o.order_id, o.status, o.external_order_id FROM erp.sales_orders o WHERE EXISTS "
                "(SELECT 1 FROM erp.sales_order_lines l WHERE l.order_id = o.order_id AND l.sku = ANY(%s))", (skus,)):
            w.orders[order_id] = (status, ext)
        for order_id, line_no, sku, qty, status in erp.execute(
                "SELECT order_id, line_no, sku, qty, status FROM erp.sales_order_lines WHERE sku = ANY(%s)", (skus,)):
            w.lines[(order_id, line_no)] = (sku, qty, status)
    wms = pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password.get_secret_value(),
                          database=m.dbname)
    try:
        with wms.cursor() as cur:
            marks = ",".join(["%s"] * len(skus))
            cur.execute(f"SELECT sku, location, on_hand, allocated, in_transit FROM inventory_balances "
                        f"WHERE sku IN ({marks})", skus)
            for sku, loc, oh, al, tr in cur.fetchall():
                w.balances[(sku, loc)] = (oh, al, tr)
            cur.execute(f"SELECT allocation_id, order_id, line_no, qty, status FROM allocations WHERE sku IN ({marks})",
                        skus)
            for alloc_id, order_id, line_no, qty, status in cur.fetchall():
                w.allocations[alloc_id] = (order_id, line_no, qty, status)
    finally:
        wms.close()
    return w


def truth(settings: Settings, skus: list[str]) -> dict[tuple[str, str], int]:
    w = world_from_sources(settings, skus)
    return {(c.id, sku): expected_ats(w, c, sku) for c in CHANNELS for sku in skus}


def redis_values(client: Any, skus: list[str]) -> dict[tuple[str, str], int | None]:
    out: dict[tuple[str, str], int | None] = {}
    for c in CHANNELS:
        for sku, raw in zip(skus, client.hmget(f"ats:{c.id}", skus), strict=True):
            out[(c.id, sku)] = None if raw is None else int(raw)
    return out
