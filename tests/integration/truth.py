"""ATS recomputed straight from the systems of record (SQL), with the tests' independent formula,
and what Redis and the availability topics say, to compare with it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import psycopg
import pymysql
import redis

from erpsync.channels import load_channels
from erpsync.settings import Settings
from schemas.registry import SchemaRegistry, make_value_deserializer
from state.channels import Channel

from .conftest import read_to_end

CHANNELS = load_channels()


@dataclass
class World:
    """The final source rows, as the ERP and the WMS hold them (the tests' own model)."""

    balances: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    items: dict[str, tuple[int, str]] = field(default_factory=dict)
    orders: dict[int, tuple[str, str]] = field(default_factory=dict)  # status, ext id
    lines: dict[tuple[int, int], tuple[str, int, str]] = field(default_factory=dict)
    allocations: dict[int, tuple[int, int, int, str]] = field(default_factory=dict)  # order, line, qty, status


def expected_ats(w: World, channel: Channel, sku: str) -> int:
    """Spec section 5, written independently of the pipeline's state modules (no intakes pending)."""
    item = w.items.get(sku)
    if item is None or item[1] != "active":
        return 0
    free = sum(max(0, oh - al) + (tr if channel.include_in_transit else 0)
               for (s, loc), (oh, al, tr) in w.balances.items()
               if s == sku and (channel.locations is None or loc in channel.locations))
    committed = 0
    for (order_id, line_no), (line_sku, qty, status) in w.lines.items():
        header = w.orders.get(order_id)
        if line_sku == sku and status == "open" and header and header[0] in {"entered", "released", "on_hold",
                                                                              "allocated"}:
            allocated = sum(q for o, ln, q, s in w.allocations.values() if (o, ln) == (order_id, line_no)
                            and s != "cancelled")
            committed += max(0, qty - allocated)
    network = free - item[0] - committed
    return max(0, int(network * Fraction(str(channel.share)) // 1))


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


def wait_for_truth(settings: Settings, store: redis.Redis, skus: list[str], timeout_s: float = 120) -> dict[Any, Any]:
    expected = truth(settings, skus)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if redis_values(store, skus) == expected:
            return expected
        time.sleep(0.2)
    assert redis_values(store, skus) == expected
    return expected


def latest_on_topics(settings: Settings, skus: set[str], since_ms: int,
                     expected: dict[tuple[str, str], int] | None = None,
                     timeout_s: float = 30) -> dict[tuple[str, str], int]:
    """The last ATS per (channel, SKU) on the availability topics; with `expected`, read again until
    they agree or `timeout_s` passes (the topics are written in transactions committed at each
    snapshot, a moment after Redis)."""
    deadline = time.monotonic() + timeout_s
    while True:
        latest = _latest_on_topics(settings, skus, since_ms)
        if expected is None or latest == expected or time.monotonic() > deadline:
            return latest
        time.sleep(1)


def _latest_on_topics(settings: Settings, skus: set[str], since_ms: int) -> dict[tuple[str, str], int]:
    deserialize = make_value_deserializer(SchemaRegistry.load(), settings.kafka.schema_registry_url)
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
