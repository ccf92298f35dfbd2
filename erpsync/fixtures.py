"""``erpsync capture-fixtures``: real Debezium envelopes from the local stack, for tests.

Runs a scripted set of ERP and WMS changes (every mapped table; create, update, delete, multi-row
transactions, a TOASTed value left unchanged, incremental-snapshot reads), then dumps every raw
record about those rows, and the transaction metadata of their transactions, in kcat's JSON format
(``kcat -C -J``), ordered as Kafka holds them.
"""

from __future__ import annotations

import json
import secrets
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from erpsync.settings import Settings
from erpsync.topics import Follower
from schemas.mapping import MAPPINGS_DIR


def _erp(settings: Settings) -> psycopg.Connection[Any]:
    e = settings.erp
    return psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                           password=e.password.get_secret_value(), autocommit=True)


def _wms(settings: Settings) -> pymysql.connections.Connection:
    w = settings.wms
    return pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                           database=w.dbname, autocommit=True)


def erp_script(tag: str, base: int) -> list[str]:
    """SQL for the ERP, one transaction per string. Keys carry `tag` or ids from `base` on."""
    c, s1, s2 = f"C-{tag}", f"SKU-{tag}-1", f"SKU-{tag}-2"
    o = base
    big = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))"
    return [
        f"INSERT INTO erp.customers VALUES ('{c}', 'A-{tag}', 'Fixture Co', 'PL-{tag}', 5000.00, false,"
        " 'US-TX-AUSTIN', '2026-11-27 10:00:00+00')",
        f"INSERT INTO erp.items (sku, description, safety_stock) VALUES ('{s1}', 'Widget', 5), ('{s2}', 'Gadget', 0)",
        f"INSERT INTO erp.price_list_lines VALUES ('PL-{tag}', '{s1}', 12.5000, '2026-01-01', NULL),"
        f" ('PL-{tag}', '{s2}', 3.9900, '2026-01-01', '2026-12-31')",
        f"UPDATE erp.customers SET credit_hold = true, credit_limit = 7500.25 WHERE customer_id = '{c}'",
        f"UPDATE erp.price_list_lines SET unit_price = 13.0000 WHERE sku = '{s1}'",
        f"INSERT INTO erp.order_intake (channel, external_order_id, payload) VALUES ('marketplace', 'MP-{tag}',"
        f" jsonb_build_object('note', {big}))",
        # payload unchanged and stored out of line: pgoutput omits it, Debezium sends its placeholder
        f"UPDATE erp.order_intake SET status = 'imported', erp_order_id = {o} WHERE external_order_id = 'MP-{tag}'",
        f"INSERT INTO erp.sales_orders (order_id, channel, external_order_id, customer_id, status,"
        " fulfillment_method, tax_jurisdiction, merchandise_total, freight_total, tax_total, order_total)"
        f" VALUES ({o}, 'marketplace', 'MP-{tag}', '{c}', 'entered', 'SHIP', 'US-TX-AUSTIN', 50.00, 5.00,"
        " 4.13, 59.13);"
        f" INSERT INTO erp.sales_order_lines VALUES ({o}, 1, '{s1}', 2, 12.5000, 'open'),"
        f" ({o}, 2, '{s2}', 6, 3.9900, 'open')",
        f"UPDATE erp.sales_orders SET status = 'released' WHERE order_id = {o};"
        f" UPDATE erp.sales_order_lines SET qty = 3 WHERE order_id = {o} AND line_no = 1",
        f"UPDATE erp.sales_order_lines SET status = 'cancelled' WHERE order_id = {o} AND line_no = 2",
        f"INSERT INTO erp.invoices VALUES ({o}, {o}, 59.13, 4.13, 5.00, '2026-11-28 09:00:00+00')",
        f"INSERT INTO erp.credit_memos VALUES ({o}, {o}, 'RMA-{tag}', 12.50, 'damaged', '2026-11-29 09:00:00+00')",
        f"UPDATE erp.items SET status = 'discontinued' WHERE sku = '{s2}'",
        f"DELETE FROM erp.price_list_lines WHERE sku = '{s2}'",
        f"DELETE FROM erp.items WHERE sku = '{s2}' AND NOT EXISTS"
        f" (SELECT 1 FROM erp.sales_order_lines WHERE sku = '{s2}')",
        f"INSERT INTO erp.items (sku, description) VALUES ('SKU-{tag}-3', 'Short-lived')",
        f"DELETE FROM erp.items WHERE sku = 'SKU-{tag}-3'",
        "INSERT INTO erpsync_cdc.debezium_signal VALUES"
        f" ('snap-{tag}', 'execute-snapshot', '{{\"data-collections\": [\"erp.items\"], \"type\": \"incremental\"}}')",
    ]


def wms_script(tag: str, base: int) -> list[str]:
    """SQL for the WMS, one transaction per string."""
    s1, o = f"SKU-{tag}-1", base
    return [
        f"INSERT INTO inventory_balances (sku, location, on_hand, allocated, in_transit, updated_at) VALUES"
        f" ('{s1}', 'DC-EAST', 100, 0, 0, '2026-11-27 10:00:00.123456'),"
        f" ('{s1}', 'DC-WEST', 40, 0, 25, '2026-11-27 10:00:00.123456')",
        f"INSERT INTO allocations (allocation_id, order_id, line_no, sku, location, qty, status) VALUES"
        f" ({o}, {o}, 1, '{s1}', 'DC-EAST', 3, 'allocated');"
        f" UPDATE inventory_balances SET allocated = allocated + 3 WHERE sku = '{s1}' AND location = 'DC-EAST'",
        f"UPDATE allocations SET status = 'picked' WHERE allocation_id = {o}",
        f"INSERT INTO shipments VALUES ({o}, {o}, 'DC-EAST', 'UPS', '1Z{tag}', 'packed', 7.50, NULL);"
        f" INSERT INTO shipment_lines VALUES ({o}, 1, '{s1}', 2), ({o}, 2, 'SKU-{tag}-2', 1)",
        f"UPDATE shipments SET status = 'dispatched', shipped_at = '2026-11-28 08:30:00.000001'"
        f" WHERE shipment_id = {o}; UPDATE shipment_lines SET qty = 3 WHERE shipment_id = {o} AND line_no = 1;"
        f" UPDATE allocations SET status = 'shipped' WHERE allocation_id = {o};"
        f" UPDATE inventory_balances SET on_hand = on_hand - 3, allocated = allocated - 3"
        f" WHERE sku = '{s1}' AND location = 'DC-EAST'",
        f"INSERT INTO returns VALUES ('RMA-{tag}', {o}, 1, '{s1}', 1, 'restock', '2026-11-29 08:00:00.5')",
        f"UPDATE inventory_balances SET on_hand = on_hand + 1 WHERE sku = '{s1}' AND location = 'DC-EAST'",
        f"DELETE FROM shipment_lines WHERE shipment_id = {o} AND line_no = 2",
        f"DELETE FROM inventory_balances WHERE sku = '{s1}' AND location = 'DC-WEST'",
        f"INSERT INTO debezium_signal VALUES ('snap-{tag}', 'execute-snapshot',"
        " '{\"data-collections\": [\"wms.inventory_balances\"], \"type\": \"incremental\"}')",
    ]


def _dump(settings: Settings, topics: list[str], wanted: Any, quiet_s: float) -> Iterator[dict[str, Any]]:
    """Every record of `topics` whose key satisfies wanted(key), in partition order, kcat -J shaped.

    Topics that Debezium has not created yet are picked up as they appear; reading stops after
    quiet_s without a wanted record.
    """
    last_data = time.monotonic()
    with Follower(settings, topics, group="erpsync-fixtures") as reader:
        while time.monotonic() - last_data < quiet_s:
            msg = reader.poll(0.5)
            if msg is None:
                continue
            raw_key, raw_value = msg.key(), msg.value()
            key = raw_key.decode() if raw_key is not None else None
            if not wanted(msg.topic(), key):
                continue
            last_data = time.monotonic()
            yield {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                   "tstype": "create", "ts": msg.timestamp()[1], "broker": 1, "key": key,
                   "payload": raw_value.decode() if raw_value is not None else None}


STEPS = ("ERP changes", "WMS changes", "reading erp topics", "reading wms topics", "reading heartbeats")


def capture(settings: Settings, output: Path, *, settle_s: float = 15.0,
            on_step: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run the scripts and write erp.jsonl and wms.jsonl (plus heartbeats.jsonl) into output.

    on_step is called with each of STEPS as it begins.
    """
    step = on_step or (lambda name: None)
    tag = f"FX{secrets.token_hex(3).upper()}"
    base = 900_000_000 + secrets.randbelow(90_000_000)
    step("ERP changes")
    with _erp(settings) as conn:
        for statement in erp_script(tag, base):
            conn.execute(statement)
    step("WMS changes")
    wms = _wms(settings)
    try:
        with wms.cursor() as cur:
            for statement in wms_script(tag, base):
                cur.execute("BEGIN")
                for part in statement.split("; "):
                    cur.execute(part)
                cur.execute("COMMIT")
    finally:
        wms.close()

    def ours(topic: str, key: str | None) -> bool:
        return key is not None and (tag in key or str(base) in key)

    output.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for system in ("erp", "wms"):
        step(f"reading {system} topics")
        records = list(_dump(settings, _topics(system), ours, settle_s))
        # and the transaction metadata (BEGIN/END) of the transactions those changes belong to
        ids = {(json.loads(r["payload"]).get("transaction") or {}).get("id") for r in records if r["payload"]}
        records += _dump(settings, [f"{system}.transaction"], _transaction_of(ids), 3.0)
        (output / f"{system}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        counts[system] = len(records)
    step("reading heartbeats")
    beats = list(_dump(settings, ["__debezium-heartbeat.erp", "__debezium-heartbeat.wms"],
                       lambda t, k: True, 2.0))[-4:]
    (output / "heartbeats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in beats))
    counts["heartbeats"] = len(beats)
    return counts


def _transaction_of(ids: set[Any]) -> Any:
    def wanted(topic: str, key: str | None) -> bool:
        return key is not None and json.loads(key).get("id") in ids
    return wanted


def _topics(system: str) -> list[str]:
    """The raw topics of a source system's mapped tables."""
    docs = [tomllib.loads(p.read_text()) for p in MAPPINGS_DIR.glob("*.toml") if p.name != "ignore.toml"]
    return sorted(f"{d['system']}.{d['table']}" for d in docs if d["system"] == system)
