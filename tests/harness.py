"""A small world of source changes as Debezium writes them, and the production dataflow run over them.

``World`` plays the ERP (PostgreSQL: commit time and LSN positions, REPLICA IDENTITY FULL before
images) and the WMS (MariaDB: binlog positions, whole-second source times), with Debezium's
transaction metadata, and the channels (commerce.orders). Every record gets a Kafka timestamp, the
pipeline's event time. ``run`` feeds the records, in any interleaving that keeps each partition's
order, through ``flows.pipeline.build_flow`` with 1 or 2 workers and any batch size, and returns
what the pipeline produced. ``finals`` reduces that to what spec section 5a says must not vary.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from erpsync.channels import load_channels
from flows.canonicalize import make_canonicalizer
from flows.pipeline import Sinks, Sources, Topology, build_flow
from schemas.registry import SchemaRegistry
from state.order_status import Slas
from state.records import DeadLetter, Emit, Ignored, Progress, RawRecord

T0 = 1_795_000_000_000  # 2026-11-16
DAY0 = T0 // 86_400_000
CHANNELS = load_channels()
_REGISTRY: SchemaRegistry | None = None

ERP_KEYS = {"items": ["sku"], "customers": ["customer_id"], "price_list_lines": ["price_list_id", "sku", "valid_from"],
            "sales_orders": ["order_id"], "sales_order_lines": ["order_id", "line_no"], "invoices": ["invoice_id"],
            "credit_memos": ["credit_memo_id"], "order_intake": ["channel", "external_order_id"]}
WMS_KEYS = {"inventory_balances": ["sku", "location"], "allocations": ["allocation_id"], "shipments": ["shipment_id"],
            "shipment_lines": ["shipment_id", "line_no"], "returns": ["rma_id"]}


def registry() -> SchemaRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = SchemaRegistry.load()
    return _REGISTRY


class World:
    """Source systems and channels whose changes become Kafka records (``records``, per partition in order)."""

    def __init__(self, start_ms: int = T0) -> None:
        self.now = start_ms
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.partitions: dict[str, list[RawRecord]] = {}
        self.lsn = 10_000
        self.binlog = 4
        self.gtid = 0
        self.txid = 500
        self._tx: tuple[str, int, list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]] | None = None

    # -- time

    def at(self, ms: int) -> World:
        """Move the clock to `ms` after the start (it never goes back)."""
        self.now = max(self.now, T0 + ms)
        return self

    def later(self, ms: int) -> World:
        self.now += ms
        return self

    # -- source transactions

    @contextmanager
    def erp(self) -> Iterator[World]:
        """One ERP transaction: its changes share a commit time and come between BEGIN and END."""
        with self._transaction("erp"):
            yield self

    @contextmanager
    def wms(self) -> Iterator[World]:
        with self._transaction("wms"):
            yield self

    @contextmanager
    def _transaction(self, system: str) -> Iterator[None]:
        assert self._tx is None, "transactions do not nest"
        self._tx = (system, self.now, [])
        yield
        system, start, changes = self._tx
        self._tx = None
        self._flush(system, start, changes)
        self.now += 1

    def upsert(self, table: str, row: dict[str, Any]) -> World:
        system = self._system(table)
        key = json.dumps([row[k] for k in self._keys(table)])
        before = self.rows.get((table, key))
        after = {**(before or {}), **row}
        self.rows[(table, key)] = after
        return self._change(system, table, before, after)

    def delete(self, table: str, row: dict[str, Any]) -> World:
        system = self._system(table)
        key = json.dumps([row[k] for k in self._keys(table)])
        before = self.rows.pop((table, key), None) or dict(row)
        return self._change(system, table, before, None)

    def _change(self, system: str, table: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> World:
        if self._tx is None:
            with self._transaction(system):
                return self._change(system, table, before, after)
        assert self._tx[0] == system, f"{table} is not a table of {self._tx[0]}"
        self._tx[2].append((table, "c" if before is None else "d" if after is None else "u", before, after))
        return self

    @staticmethod
    def _system(table: str) -> str:
        return "erp" if table in ERP_KEYS else "wms"

    @staticmethod
    def _keys(table: str) -> list[str]:
        return ERP_KEYS.get(table) or WMS_KEYS[table]

    def _flush(self, system: str, commit_ms: int, changes: list[Any]) -> None:
        time = commit_ms
        if system == "erp":
            self.txid += 1
            tx_id = f"{self.txid}:{self.lsn}"
        else:
            self.gtid += 1
            tx_id = f"0-1-{self.gtid}"
        self._add(f"{system}.transaction", {"id": tx_id}, {"status": "BEGIN", "id": tx_id, "ts_ms": commit_ms,
                                                             "event_count": None, "data_collections": None}, time)
        for i, (table, op, before, after) in enumerate(changes):
            if system == "erp":
                self.lsn += 100
                source = {"version": "3.6.1.Final", "connector": "postgresql", "name": "erp", "ts_ms": commit_ms,
                          "snapshot": "false", "db": "erp", "sequence": f'["{self.lsn - 100 - i * 100}","{self.lsn}"]',
                          "schema": "erp", "table": table, "txId": self.txid, "lsn": self.lsn}
                topic = f"erp.erp.{table}"
            else:
                self.binlog += 300
                source = {"version": "3.5.0.Final", "connector": "mariadb", "name": "wms",
                          "ts_ms": commit_ms - commit_ms % 1000, "snapshot": "false", "db": "wms", "table": table,
                          "server_id": 1, "gtid": tx_id, "file": "binlog.000002", "pos": self.binlog, "row": 0}
                topic = f"wms.wms.{table}"
            row = after if after is not None else before
            assert row is not None
            key = {k: row[k] for k in self._keys(table)}
            envelope = {"before": before if op != "c" else None, "after": after, "source": source, "op": op,
                        "ts_ms": commit_ms + 3, "transaction": {"id": tx_id, "total_order": i + 1}}
            time += i % 2  # a transaction's records may reach Kafka a millisecond apart
            self._add(topic, key, envelope, time)
            if op == "d":
                self._add(topic, key, None, time)  # the tombstone
        self._add(f"{system}.transaction", {"id": tx_id}, {"status": "END", "id": tx_id, "ts_ms": commit_ms,
                                                           "event_count": len(changes), "data_collections": []}, time)

    def _add(self, topic: str, key: Any, value: Any, ts: int, partition: int = 0) -> None:
        records = self.partitions.setdefault(f"{topic}#{partition}", [])
        records.append(RawRecord(topic, partition, len(records), json.dumps(key).encode(),
                                 None if value is None else json.dumps(value, default=str).encode(), ts,
                                 channel=f"{topic}#{partition}"))

    # -- channels

    def channel_order(self, ext: str, *, channel: str = "marketplace", lines: list[tuple[str, int, str]] | None = None,
                      customer: str = "C-1", payment: str = "approved", raw: bytes | None = None,
                      **changes: Any) -> World:
        """A channel order arriving now (placed_at: now, unless given)."""
        doc: dict[str, Any] = {
            "channel": channel, "external_order_id": ext, "customer_id": customer, "payment_status": payment,
            "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP", "currency": "USD",
            "placed_at": _iso(self.now), "freight_total": "5.00", "discount_total": "0.00", "tax_total": "1.20",
            "lines": [{"line_no": i + 1, "sku": sku, "qty": qty, "unit_price": price}
                      for i, (sku, qty, price) in enumerate(lines or [("SKU-1", 2, "12.5000")])]}
        doc.update(changes)
        records = self.partitions.setdefault("commerce.orders#0", [])
        value = raw if raw is not None else json.dumps(doc).encode()
        records.append(RawRecord("commerce.orders", 0, len(records), f"{channel}:{ext}".encode(), value, self.now,
                                 channel="commerce.orders#0"))
        self.now += 1
        return self

    # -- the reference catalog

    def catalog(self, skus: dict[str, int] | None = None, price: str = "12.5000", safety: int = 0) -> World:
        """Customer C-1 on price list PL-1, items with a price and stock at DC-EAST (sku -> on hand)."""
        with self.erp():
            self.upsert("customers", customer("C-1"))
            for sku in skus or {"SKU-1": 10}:
                self.upsert("items", item(sku, safety=safety))
                self.upsert("price_list_lines", price_line(sku, price))
        with self.wms():
            for sku, qty in (skus or {"SKU-1": 10}).items():
                self.upsert("inventory_balances", stock(sku, qty))
        return self

    def records(self) -> list[RawRecord]:
        """Every record, each partition in order, partitions one after another."""
        return [r for records in self.partitions.values() for r in records]


def _iso(ms: int) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def customer(customer_id: str, *, hold: bool = False, tax: str | None = "US-TX-AUSTIN", price_list: str = "PL-1") -> dict:
    return {"customer_id": customer_id, "account_no": f"A-{customer_id}", "name": customer_id,
            "price_list_id": price_list, "credit_limit": "1000.00", "credit_hold": hold, "tax_jurisdiction": tax,
            "updated_at": "2026-11-16T00:00:00Z"}


def item(sku: str, *, safety: int = 0, status: str = "active") -> dict:
    return {"sku": sku, "description": sku, "uom": "EA", "safety_stock": safety, "status": status,
            "updated_at": "2026-11-16T00:00:00Z"}


def price_line(sku: str, price: str, *, price_list: str = "PL-1", valid_from: int = DAY0 - 30,
               valid_to: int | None = None) -> dict:
    return {"price_list_id": price_list, "sku": sku, "unit_price": price, "valid_from": valid_from,
            "valid_to": valid_to}


def stock(sku: str, on_hand: int, *, location: str = "DC-EAST", allocated: int = 0, in_transit: int = 0) -> dict:
    return {"sku": sku, "location": location, "on_hand": on_hand, "allocated": allocated, "in_transit": in_transit,
            "updated_at": 1_795_000_000_000_000}


def sales_order(order_id: int, ext: str, *, channel: str = "marketplace", status: str = "entered",
                total: str = "30.20", freight: str = "5.00") -> dict:
    return {"order_id": order_id, "channel": channel, "external_order_id": ext, "customer_id": "C-1",
            "status": status, "currency": "USD", "fulfillment_method": "SHIP", "tax_jurisdiction": "US-TX-AUSTIN",
            "merchandise_total": "25.00", "discount_total": "0.00", "freight_total": freight, "tax_total": "0.20",
            "order_total": total, "created_at": "2026-11-16T00:00:00Z", "updated_at": "2026-11-16T00:00:00Z"}


def order_line(order_id: int, line_no: int, sku: str, qty: int, *, status: str = "open",
               price: str = "12.5000") -> dict:
    return {"order_id": order_id, "line_no": line_no, "sku": sku, "qty": qty, "unit_price": price, "status": status}


def allocation(allocation_id: int, order_id: int, line_no: int, sku: str, qty: int, *,
               status: str = "allocated", location: str = "DC-EAST") -> dict:
    return {"allocation_id": allocation_id, "order_id": order_id, "line_no": line_no, "sku": sku,
            "location": location, "qty": qty, "status": status, "updated_at": 1_795_000_000_000_000}


def intake_row(channel: str, ext: str, payload: dict, *, status: str = "pending", erp_order_id: int | None = None,
               error: str | None = None) -> dict:
    return {"channel": channel, "external_order_id": ext, "payload": json.dumps(payload, default=str),
            "status": status, "erp_order_id": erp_order_id, "error": error,
            "received_at": "2026-11-16T00:00:00Z"}


# ----------------------------------------------------------------------------- running the pipeline


def interleave(world: World, seed: int) -> list[RawRecord]:
    """The records in a random order that keeps each partition's own order."""
    rng = random.Random(seed)
    queues = {k: list(v) for k, v in world.partitions.items()}
    out: list[RawRecord] = []
    while queues:
        k = rng.choice(sorted(queues))
        out.append(queues[k].pop(0))
        if not queues[k]:
            del queues[k]
    return out


def with_ignorable(records: list[RawRecord], seed: int) -> list[RawRecord]:
    """Heartbeats sprinkled in (their own channel, in time order)."""
    rng = random.Random(seed)
    out: list[RawRecord] = []
    n = 0
    for r in records:
        if rng.random() < 0.3:
            out.append(RawRecord("__debezium-heartbeat.erp", 0, n, b'{"serverName":"erp"}',
                                 json.dumps({"ts_ms": T0 + n}).encode(), T0 + n, channel="__debezium-heartbeat.erp#0"))
            n += 1
        out.append(r)
    return out


def run(records: list[RawRecord], *, workers: int = 1, batch: int = 10, slas: Slas | None = None,
        grace_ms: int = 100) -> list[Any]:
    """The production dataflow over `records` (as a replay: each channel ends with the input)."""
    channels = sorted({r.read_from for r in records})
    items: list[Any] = [*records, *(Progress(c, None) for c in channels)]
    out: list[Any] = []

    def sink(step_id: str, stream: Any) -> None:
        op.output(step_id, stream, TestingSink(out))

    def nowhere(step_id: str, stream: Any) -> None:
        op.output(step_id, stream, TestingSink([]))

    def source(flow: Dataflow) -> Any:
        return op.input("in", flow, TestingSource(items, batch_size=batch))

    flow = build_flow(registry(), CHANNELS, Topology(channels, workers=workers, shards=3, grace_ms=grace_ms),
                      sources=Sources(source), sinks=Sinks(sink, sink, sink, nowhere, nowhere, nowhere, nowhere),
                      slas=slas or Slas(), canonicalizer=canonicalizer())
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


_CANONICALIZER: Any = None


def canonicalizer() -> Any:
    global _CANONICALIZER
    if _CANONICALIZER is None:
        _CANONICALIZER = make_canonicalizer(registry())
    return _CANONICALIZER


def emits(out: list[Any], prefix: str = "") -> list[Emit]:
    return [o for o in out if isinstance(o, Emit) and o.topic.startswith(prefix)]


def dead_letters(out: list[Any]) -> list[DeadLetter]:
    return [o for o in out if isinstance(o, DeadLetter)]


def ignored(out: list[Any]) -> list[Ignored]:
    return [o for o in out if isinstance(o, Ignored)]


def exceptions(out: list[Any]) -> dict[str, dict[str, Any]]:
    """Each exception's final record: the newest by event time (a resolution wins a tie)."""
    final: dict[str, dict[str, Any]] = {}
    for e in emits(out, "sync.exceptions"):
        v = e.value
        old = final.get(v["id"])
        if old is None or (v["last_seen_ms"], v["state"] == "resolved") >= (old["last_seen_ms"],
                                                                             old["state"] == "resolved"):
            final[v["id"]] = v
    return final


def finals(out: list[Any]) -> dict[str, Any]:
    """What must not vary (spec 5a): final values per (topic, key), exception kinds, keys and states."""
    values: dict[tuple[str, str], Any] = {}
    for e in emits(out):
        if e.topic.startswith("availability."):
            values[(e.topic, e.key)] = (e.value["ats"], e.value["status"])
        elif e.topic.startswith("order-status.") or e.topic == "erp.order-intake":
            values[(e.topic, e.key)] = {k: v for k, v in e.value.items() if k != "version"}
        elif e.topic.startswith("canonical."):
            values[(e.topic, e.key)] = (e.value["op"], e.value["source"]["position"])
    states = {(v["kind"], v["business_key"], v["state"]) for v in exceptions(out).values()}
    return {"values": values, "exceptions": states}


def ats(out: list[Any], channel: str, sku: str) -> int | None:
    """The last ATS published for a SKU on a channel (None: never published)."""
    values = [e.value["ats"] for e in emits(out, f"availability.{channel}") if e.key == sku]
    return values[-1] if values else None


def decimal(text: str) -> Decimal:
    return Decimal(text)
