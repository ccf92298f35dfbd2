"""Benchmark data: a distributor's ERP, WMS and channels as the Kafka records Debezium and the channels write.

Every bench that feeds the pipeline draws its input from here, so the figures are measured on data
that exercises the formula (spec section 5): active items priced on their customers' price lists,
stock at the three reference locations, channel orders on ``commerce.orders`` that intake accepts,
whose ERP import commits stock and releases the intake reservation in one ERP transaction, WMS
allocations that take over the commitment, shipments that draw stock down, invoices, receipts that
replenish it; cancellations and deletes (order lines removed, allocations taken back, empty
locations dropped), discontinued items, rejected channel orders, channel resubmissions and
Debezium redelivery (a connector restart sends a committed transaction again, same positions).
The final ATS of most SKUs is well above zero.

The records are what the reference connectors write (``tests/fixtures/debezium``): JSON converter
without schemas, PostgreSQL source blocks with LSN, txId and sequence; MariaDB source blocks with
binlog file, position, row and GTID, whole-second source times; ``provide.transaction.metadata``:
BEGIN/END records on ``erp.transaction`` / ``wms.transaction`` and a ``transaction`` block on every
change; REPLICA IDENTITY FULL before images; tombstones after deletes. Kafka timestamps (the
pipeline's event time) never go back on any topic.

``Workload(...).records(n)`` yields about ``n`` records lazily (state kept: the catalog and the
orders in flight, not the records), so a history of millions costs no memory beyond the catalog.
Everything is decided by one ``random.Random(seed)``: the same arguments give the same records.
``tag`` goes into every id, so several runs can share one stack without touching each other's keys.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LOCATIONS = ("DC-EAST", "DC-WEST", "DC-CENTRAL")
CHANNELS = ("b2b-portal", "marketplace", "inside-sales")
CARRIERS = ("UPS", "FEDEX", "DHL")
PRICE_LISTS = ("PL-STD", "PL-GOLD")
ERP_KEYS = {"items": ("sku",), "customers": ("customer_id",), "invoices": ("invoice_id",),
            "price_list_lines": ("price_list_id", "sku", "valid_from"), "sales_orders": ("order_id",),
            "sales_order_lines": ("order_id", "line_no"),
            "order_intake": ("channel", "external_order_id")}
WMS_KEYS = {"inventory_balances": ("sku", "location"), "allocations": ("allocation_id",),
            "shipments": ("shipment_id",), "shipment_lines": ("shipment_id", "line_no")}
_JSON = json.JSONEncoder(separators=(",", ":"))
# every topic the workload writes to (the input channels of a pipeline that reads it)
TOPICS = ("commerce.orders", "erp.transaction", "wms.transaction", "__debezium-heartbeat.erp",
          "__debezium-heartbeat.wms", *(f"erp.erp.{t}" for t in ERP_KEYS), *(f"wms.wms.{t}" for t in WMS_KEYS))
CATALOG_TOPICS = ("erp.transaction", "wms.transaction", "erp.erp.customers", "erp.erp.items",
                  "erp.erp.price_list_lines", "wms.wms.inventory_balances")


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record: key and value as the JSON text the producer sends (None: tombstone or no key)."""

    topic: str
    key: str | None
    value: str | None
    ts: int  # the Kafka timestamp: the pipeline's event time

    def kcat(self, offset: int) -> str:
        """The line ``kcat -C -J`` prints for it (spec section 10), the replay input."""
        return _JSON.encode({"topic": self.topic, "partition": 0, "offset": offset, "tstype": "create",
                             "ts": self.ts, "broker": 1, "key": self.key, "payload": self.value})


@dataclass(slots=True)
class _Sku:
    price: str
    safety: int
    active: bool = True
    # per location: [on_hand, allocated, in_transit]; absent: no balance row there
    stock: dict[str, list[int]] = field(default_factory=dict)
    committed: int = 0  # open ERP order lines not yet allocated
    reserved: int = 0  # accepted channel orders not yet in the ERP


@dataclass(slots=True)
class _Order:
    order_id: int
    channel: str
    ext: str
    customer: str
    lines: list[tuple[int, str, int]]  # (line_no, sku, qty)
    prices: dict[str, str]  # sku -> unit price (the customer's price list)
    allocations: list[tuple[int, int, str, str, int]] = field(default_factory=list)  # (id, line, sku, loc, qty)
    status: str = "entered"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Workload:
    """The sources' history, as records; see the module doc.

    `skus`, `customers`: catalog sizes; `start_ms`: event time of the first record (the live benches
    start it shortly before now: Kafka deletes records older than the topics' retention);
    `tx_gap_ms`: mean event time between source transactions (1: about 1,000 transactions/s).
    """

    def __init__(self, *, skus: int, customers: int = 1000, seed: int = 7, tag: str = "B",
                 start_ms: int = 1_795_000_000_000, tx_gap_ms: float = 1.0,
                 locations_per_sku: tuple[int, ...] = (3, 3, 3, 2, 1)) -> None:
        self.rng = random.Random(seed)
        self.tag = tag
        self.n_skus, self.n_customers = skus, customers
        self.now = start_ms
        self.gap = tx_gap_ms
        self.locations_per_sku = locations_per_sku
        self.lsn, self.txid, self.binlog, self.gtid = 40_000_000, 6_000, 4, 900
        self.skus: dict[str, _Sku] = {}
        self.sku_names: list[str] = []
        self.customers: list[tuple[str, str]] = []  # (customer_id, price list)
        self.next_id = 5_000_000_000 + int.from_bytes(tag.encode()[:4], "big") % 100_000 * 10_000_000  # ids of this tag
        self.headers: dict[int, dict[str, Any]] = {}  # ERP orders not yet final: their current header row
        self.entered: deque[_Order] = deque()  # in the ERP, not yet allocated
        self.allocated: deque[_Order] = deque()
        self.shipped: deque[_Order] = deque()
        self.to_import: deque[tuple[_Order, dict[str, Any]]] = deque()  # accepted by intake, not yet imported
        self.last_tx: dict[str, list[Record]] = {}  # per system: its last transaction (for redelivery)
        self.emitted = 0
        self.orders_placed = 0

    # ------------------------------------------------------------------ records of one transaction

    def _tx(self, system: str, changes: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]
            ) -> list[Record]:
        """One source transaction: BEGIN, its changes (and tombstones), END, as Debezium writes them."""
        self.now += max(1, round(self.rng.expovariate(1 / self.gap))) if self.gap > 0 else 0
        commit = self.now
        if system == "erp":
            self.txid += 1
            tx_id = f"{self.txid}:{self.lsn + 64}"
        else:
            self.gtid += 1
            tx_id = f"0-1-{self.gtid}"
        out = [Record(f"{system}.transaction", _JSON.encode({"id": tx_id}), _JSON.encode(
            {"status": "BEGIN", "id": tx_id, "event_count": None, "data_collections": None, "ts_ms": commit}), commit)]
        counts: dict[str, int] = {}
        ts = commit
        for i, (table, op, before, after) in enumerate(changes):
            if system == "erp":
                self.lsn += 64 + 8 * self.rng.randrange(8)
                source: dict[str, Any] = {
                    "version": "3.6.1.Final", "connector": "postgresql", "name": "erp", "ts_ms": commit,
                    "snapshot": "false", "db": "erp", "sequence": f'["{self.lsn - 64}","{self.lsn}"]',
                    "ts_us": commit * 1000, "ts_ns": commit * 1_000_000, "schema": "erp", "table": table,
                    "txId": self.txid, "lsn": self.lsn, "xmin": None, "origin": None, "origin_lsn": None}
                keys = ERP_KEYS[table]
            else:
                self.binlog += 300 + self.rng.randrange(300)
                second = commit - commit % 1000
                source = {"version": "3.5.0.Final", "connector": "mariadb", "name": "wms", "ts_ms": second,
                          "snapshot": "false", "db": "wms", "sequence": None, "ts_us": second * 1000,
                          "ts_ns": second * 1_000_000, "table": table, "server_id": 1, "gtid": tx_id,
                          "file": "binlog.000002", "pos": self.binlog, "row": 0, "thread": None, "query": None}
                keys = WMS_KEYS[table]
            topic = f"{system}.{system}.{table}"
            counts[topic] = counts.get(topic, 0) + 1
            row = after if after is not None else before
            assert row is not None
            key = _JSON.encode({k: row[k] for k in keys})
            ts += self.rng.randrange(2)  # a transaction's records reach Kafka within a few milliseconds
            out.append(Record(topic, key, _JSON.encode({
                "before": before, "after": after, "source": source,
                "transaction": {"id": tx_id, "total_order": i + 1, "data_collection_order": counts[topic]},
                "op": op, "ts_ms": ts + 5, "ts_us": (ts + 5) * 1000, "ts_ns": (ts + 5) * 1_000_000}), ts))
            if op == "d":
                out.append(Record(topic, key, None, ts))  # tombstones.on.delete
        out.append(Record(f"{system}.transaction", _JSON.encode({"id": tx_id}), _JSON.encode({
            "status": "END", "id": tx_id, "event_count": len(changes),
            "data_collections": [{"data_collection": f"{system}.{t.split('.')[-1]}", "event_count": n}
                                 for t, n in counts.items()], "ts_ms": commit}), ts))
        self.now = ts
        self.last_tx[system] = out
        return out

    def _redelivered(self, system: str) -> list[Record]:
        """A connector restart: the last transaction again, same payloads and positions, newer timestamps."""
        return [Record(r.topic, r.key, r.value, self.now) for r in self.last_tx.get(system, [])]

    # ------------------------------------------------------------------ the catalog

    def _item(self, sku: str, s: _Sku) -> dict[str, Any]:
        return {"sku": sku, "description": f"Item {sku}", "uom": "EA", "safety_stock": s.safety,
                "status": "active" if s.active else "discontinued", "updated_at": iso(self.now)}

    def _balance(self, sku: str, loc: str, b: list[int]) -> dict[str, Any]:
        return {"sku": sku, "location": loc, "on_hand": b[0], "allocated": b[1], "in_transit": b[2],
                "updated_at": self.now * 1000}

    def catalog(self) -> Iterator[list[Record]]:
        """Customers, items with prices on both price lists, stock at one to three locations; 100 rows a transaction."""
        rng = self.rng
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        for c in range(self.n_customers):
            cid, pl = f"C-{self.tag}-{c:06d}", PRICE_LISTS[c % 4 == 0]
            self.customers.append((cid, pl))
            rows.append(("customers", "c", None, {
                "customer_id": cid, "account_no": f"A-{self.tag}-{c:06d}", "name": f"Customer {c}",
                "price_list_id": pl, "credit_limit": "50000.00", "credit_hold": c % 97 == 13,
                "tax_jurisdiction": "US-TX-AUSTIN", "updated_at": iso(self.now)}))
            if len(rows) == 100:
                yield self._tx("erp", rows)
                rows = []
        if rows:
            yield self._tx("erp", rows)
        day = self.now // 86_400_000
        for start in range(0, self.n_skus, 100):
            erp_rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
            wms_rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
            for i in range(start, min(start + 100, self.n_skus)):
                sku = f"SKU-{self.tag}-{i:07d}"
                s = _Sku(f"{rng.randrange(200, 20000) / 100:.4f}", rng.choice((0, 0, 2, 5, 10)), rng.random() > 0.03)
                self.skus[sku] = s
                self.sku_names.append(sku)
                erp_rows.append(("items", "c", None, self._item(sku, s)))
                for pl in PRICE_LISTS:
                    erp_rows.append(("price_list_lines", "c", None, {
                        "price_list_id": pl, "sku": sku, "unit_price": self._price(sku, pl), "valid_from": day - 400,
                        "valid_to": None}))
                for loc in rng.sample(LOCATIONS, rng.choice(self.locations_per_sku)):
                    b = s.stock[loc] = [rng.randrange(40, 600), 0, rng.choice((0, 0, 0, 24, 48))]
                    wms_rows.append(("inventory_balances", "c", None, self._balance(sku, loc, b)))
            yield self._tx("erp", erp_rows)
            yield self._tx("wms", wms_rows)

    # ------------------------------------------------------------------ what happens every day

    def _ats(self, s: _Sku, channel: str) -> int:
        locs = ("DC-EAST",) if channel == "marketplace" else LOCATIONS
        free = sum(max(0, b[0] - b[1]) + (b[2] if channel == "inside-sales" else 0)
                   for loc, b in s.stock.items() if loc in locs)
        net = free - s.safety - s.committed - s.reserved
        return max(0, int(net * (0.8 if channel == "marketplace" else 1)))

    def _sku(self) -> tuple[str, _Sku]:
        # a popular head: a fifth of the catalog gets most of the movement
        i = int(self.rng.paretovariate(1.2) * self.n_skus / 20) % self.n_skus
        sku = self.sku_names[i]
        return sku, self.skus[sku]

    def channel_order(self) -> Iterator[Record]:
        """A channel order; accepted ones (most) wait for their ERP import, bad ones are rejected by intake."""
        rng = self.rng
        channel = rng.choice(CHANNELS)
        cid, pl = self.customers[rng.randrange(len(self.customers))]
        self.orders_placed += 1
        ext = f"{channel[:2].upper()}-{self.tag}-{self.orders_placed:08d}"
        lines: list[tuple[int, str, int]] = []
        prices = []
        fault = rng.random() < 0.04  # priced off the price list: rejected (price_mismatch)
        for n in range(rng.choice((1, 1, 2, 2, 3, 4))):
            sku, s = self._sku()
            qty = rng.randrange(1, 4)
            if any(sku == line[1] for line in lines) or not s.active or self._ats(s, channel) < qty + 5:
                continue
            lines.append((n + 1, sku, qty))
            price = self._price(sku, pl)
            prices.append(f"{float(price) + 1:.4f}" if fault else price)
        if not lines:
            return
        doc = {"channel": channel, "external_order_id": ext, "customer_id": cid, "payment_status": "approved",
               "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP", "currency": "USD",
               "placed_at": iso(self.now - 2000), "freight_total": "5.00", "discount_total": "0.00",
               "tax_total": "0.00", "lines": [{"line_no": ln, "sku": sku, "qty": qty, "unit_price": price}
                                              for (ln, sku, qty), price in zip(lines, prices, strict=True)]}
        self.now += 1
        record = Record("commerce.orders", f"{channel}:{ext}", _JSON.encode(doc), self.now)
        yield record
        if rng.random() < 0.01:  # the channel sends it again (idempotent: no second intake)
            yield Record(record.topic, record.key, record.value, self.now)
        customer_ok = int(cid.rsplit("-", 1)[1]) % 97 != 13
        if fault or not customer_ok:
            return
        order = _Order(self.next_id, channel, ext, cid, lines,
                       {line[1]: price for line, price in zip(lines, prices, strict=True)})
        self.next_id += 1
        for _, sku, qty in lines:
            self.skus[sku].reserved += qty
        payload = {"channel": channel, "external_order_id": ext, "customer_id": cid, "lines": doc["lines"]}
        intake = {"channel": channel, "external_order_id": ext, "payload": _JSON.encode(payload), "status": "pending",
                  "erp_order_id": None, "error": None, "received_at": iso(self.now)}
        yield from self._tx("erp", [("order_intake", "c", None, intake)])  # what the pipeline's intake writer adds
        self.to_import.append((order, intake))

    def erp_import(self) -> Iterator[Record]:
        """The ERP imports an accepted order: intake row imported, header and lines, one transaction."""
        order, intake = self.to_import.popleft()
        done = {**intake, "status": "imported", "erp_order_id": order.order_id}
        header = self._header(order)
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = [
            ("order_intake", "u", intake, done), ("sales_orders", "c", None, header)]
        for ln, sku, qty in order.lines:
            s = self.skus[sku]
            s.reserved -= qty
            s.committed += qty
            rows.append(("sales_order_lines", "c", None, self._line(order, ln, sku, qty, "open")))
        order.status = "entered"
        self.headers[order.order_id] = header
        yield from self._tx("erp", rows)
        self.entered.append(order)

    def _price(self, sku: str, price_list: str) -> str:
        price = self.skus[sku].price
        return price if price_list == "PL-STD" else f"{float(price) * 0.95:.4f}"

    def _header(self, order: _Order) -> dict[str, Any]:
        merchandise = sum(qty * float(order.prices[sku]) for _, sku, qty in order.lines)
        return {"order_id": order.order_id, "channel": order.channel, "external_order_id": order.ext,
                "customer_id": order.customer, "status": "entered", "currency": "USD", "fulfillment_method": "SHIP",
                "tax_jurisdiction": "US-TX-AUSTIN", "merchandise_total": f"{merchandise:.2f}",
                "discount_total": "0.00", "freight_total": "5.00", "tax_total": "0.00",
                "order_total": f"{merchandise + 5:.2f}", "created_at": iso(self.now), "updated_at": iso(self.now)}

    def _line(self, order: _Order, ln: int, sku: str, qty: int, status: str) -> dict[str, Any]:
        return {"order_id": order.order_id, "line_no": ln, "sku": sku, "qty": qty,
                "unit_price": order.prices[sku], "status": status}

    def _header_status(self, order: _Order, status: str) -> Iterator[Record]:
        before = self.headers[order.order_id]
        after = self.headers[order.order_id] = {**before, "status": status, "updated_at": iso(self.now)}
        order.status = status
        yield from self._tx("erp", [("sales_orders", "u", before, after)])

    def allocate(self) -> Iterator[Record]:
        """The WMS allocates every line at its fullest location (allocations + balances, one transaction)."""
        order = self.entered.popleft()
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        for ln, sku, qty in order.lines:
            s = self.skus[sku]
            loc, b = max(s.stock.items(), key=lambda kv: kv[1][0] - kv[1][1]) if s.stock else ("DC-EAST", None)
            if b is None:
                b = s.stock[loc] = [0, 0, 0]
                rows.append(("inventory_balances", "c", None, self._balance(sku, loc, b)))
            before = self._balance(sku, loc, b)
            b[1] += qty
            rows.append(("inventory_balances", "u", before, self._balance(sku, loc, b)))
            alloc = (self.next_id, ln, sku, loc, qty)
            self.next_id += 1
            order.allocations.append(alloc)
            s.committed -= qty
            rows.append(("allocations", "c", None, self._allocation(order, alloc, "allocated")))
        yield from self._tx("wms", rows)
        yield from self._header_status(order, "allocated")
        self.allocated.append(order)

    def _allocation(self, order: _Order, alloc: tuple[int, int, str, str, int], status: str) -> dict[str, Any]:
        aid, ln, sku, loc, qty = alloc
        return {"allocation_id": aid, "order_id": order.order_id, "line_no": ln, "sku": sku, "location": loc,
                "qty": qty, "status": status, "updated_at": self.now * 1000}

    def ship(self) -> Iterator[Record]:
        """Picked, then dispatched: shipment and lines, allocations shipped, stock drawn down; ERP follows."""
        order = self.allocated.popleft()
        yield from self._tx("wms", [("allocations", "u", self._allocation(order, a, "allocated"),
                                     self._allocation(order, a, "picked")) for a in order.allocations])
        sid = self.next_id
        self.next_id += 1
        loc = order.allocations[0][3]
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = [
            ("shipments", "c", None, {"shipment_id": sid, "order_id": order.order_id, "location": loc,
                                      "carrier": self.rng.choice(CARRIERS), "tracking_no": f"1Z{sid}",
                                      "status": "dispatched", "freight_cost": "5.00",
                                      "shipped_at": self.now * 1000})]
        for a in order.allocations:
            aid, ln, sku, aloc, qty = a
            rows.append(("shipment_lines", "c", None, {"shipment_id": sid, "line_no": ln, "sku": sku, "qty": qty}))
            rows.append(("allocations", "u", self._allocation(order, a, "picked"),
                         self._allocation(order, a, "shipped")))
            b = self.skus[sku].stock[aloc]
            before = self._balance(sku, aloc, b)
            b[0], b[1] = b[0] - qty, b[1] - qty
            rows.append(("inventory_balances", "u", before, self._balance(sku, aloc, b)))
        yield from self._tx("wms", rows)
        lines = [("sales_order_lines", "u", self._line(order, ln, sku, qty, "open"),
                  self._line(order, ln, sku, qty, "shipped")) for ln, sku, qty in order.lines]
        before = self.headers[order.order_id]
        after = self.headers[order.order_id] = {**before, "status": "shipped", "updated_at": iso(self.now)}
        yield from self._tx("erp", [*lines, ("sales_orders", "u", before, after)])
        self.shipped.append(order)

    def invoice(self) -> Iterator[Record]:
        order = self.shipped.popleft()
        header = self.headers.pop(order.order_id)
        after = {**header, "status": "invoiced", "updated_at": iso(self.now)}
        yield from self._tx("erp", [("invoices", "c", None, {
            "invoice_id": self.next_id, "order_id": order.order_id, "invoice_total": header["order_total"],
            "tax_total": "0.00", "freight_total": "5.00", "posted_at": iso(self.now)}),
            ("sales_orders", "u", header, after)])
        self.next_id += 1

    def cancel(self) -> Iterator[Record]:
        """An entered order is cancelled (lines cancelled) or loses a line (deleted): stock is released."""
        order = self.entered.pop()
        if len(order.lines) > 1 and self.rng.random() < 0.5:  # a line removed from the order
            ln, sku, qty = order.lines.pop()
            self.skus[sku].committed -= qty
            yield from self._tx("erp", [("sales_order_lines", "d", self._line(order, ln, sku, qty, "open"), None)])
            self.entered.append(order)
            return
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        for ln, sku, qty in order.lines:
            self.skus[sku].committed -= qty
            rows.append(("sales_order_lines", "u", self._line(order, ln, sku, qty, "open"),
                         self._line(order, ln, sku, qty, "cancelled")))
        before = self.headers.pop(order.order_id)
        rows.append(("sales_orders", "u", before, {**before, "status": "cancelled", "updated_at": iso(self.now)}))
        yield from self._tx("erp", rows)

    def deallocate(self) -> Iterator[Record]:
        """The WMS takes an allocation back (row deleted, stock unallocated): the line is committed again."""
        order = self.allocated.pop()
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        for a in order.allocations:
            _, _, sku, loc, qty = a
            b = self.skus[sku].stock[loc]
            before = self._balance(sku, loc, b)
            b[1] -= qty
            self.skus[sku].committed += qty
            rows.append(("allocations", "d", self._allocation(order, a, "allocated"), None))
            rows.append(("inventory_balances", "u", before, self._balance(sku, loc, b)))
        order.allocations = []
        yield from self._tx("wms", rows)
        yield from self._header_status(order, "entered")
        self.entered.append(order)

    def stock_move(self) -> Iterator[Record]:
        """Receipts (in transit -> on hand), cycle counts, replenishment of low stock, an empty location dropped."""
        rng = self.rng
        rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            sku, s = self._sku()
            loc = rng.choice(LOCATIONS)
            b = s.stock.get(loc)
            if b is None:
                b = s.stock[loc] = [rng.randrange(20, 200), 0, 0]
                rows.append(("inventory_balances", "c", None, self._balance(sku, loc, b)))
                continue
            before = self._balance(sku, loc, b)
            r = rng.random()
            if b[0] == 0 and b[1] == 0 and b[2] == 0 and len(s.stock) > 1:
                del s.stock[loc]
                rows.append(("inventory_balances", "d", before, None))
                continue
            if r < 0.3 and b[2]:
                b[0], b[2] = b[0] + b[2], 0
            elif r < 0.5 or b[0] - b[1] < 30:
                b[0] += rng.randrange(20, 300)
            elif r < 0.6:
                b[2] += rng.choice((12, 24, 48))
            elif r < 0.605 and not s.committed:
                b[0] = b[1]  # counted empty
            else:
                b[0] = max(b[1], b[0] + rng.randrange(-5, 6))
            rows.append(("inventory_balances", "u", before, self._balance(sku, loc, b)))
        if rows:
            yield from self._tx("wms", rows)

    def item_change(self) -> Iterator[Record]:
        """Safety stock or status changes; a few items are discontinued (and later some come back)."""
        sku, s = self._sku()
        before = self._item(sku, s)
        if self.rng.random() < 0.1:
            s.active = not s.active if not s.active else self.rng.random() > 0.3
        else:
            s.safety = self.rng.choice((0, 2, 5, 10))
        yield from self._tx("erp", [("items", "u", before, self._item(sku, s))])

    # ------------------------------------------------------------------ the history

    def records(self, n: int) -> Iterator[Record]:
        """The catalog, then the daily mix: exactly `n` records.

        A transaction is never cut: when the next one does not fit, the rest are Debezium heartbeats.
        """
        emitted = 0
        rng = self.rng
        actions = (self.stock_move, self.channel_order, self.item_change)
        catalog = self.catalog()
        while True:
            steps = next(catalog, None)
            if steps is None:
                r = rng.random()
                if self.to_import and (r < 0.12 or len(self.to_import) > 50):
                    steps = self.erp_import()
                elif self.entered and (r < 0.24 or len(self.entered) > 200):
                    steps = self.cancel() if rng.random() < 0.04 else self.allocate()
                elif self.allocated and (r < 0.34 or len(self.allocated) > 200):
                    steps = self.deallocate() if rng.random() < 0.03 else self.ship()
                elif self.shipped and r < 0.42:
                    steps = self.invoice()
                elif r < 0.995:
                    steps = (actions[0] if r < 0.75 else actions[1] if r < 0.98 else actions[2])()
                else:
                    steps = iter(self._redelivered(rng.choice(("erp", "wms"))))
            batch = list(steps) if emitted < n else []
            if emitted + len(batch) > n or emitted >= n:
                break
            yield from batch
            emitted += len(batch)
        for i in range(n - emitted):  # connectors' heartbeats (ignored by the pipeline)
            system = ("erp", "wms")[i % 2]
            yield Record(f"__debezium-heartbeat.{system}", _JSON.encode({"serverName": system}),
                         _JSON.encode({"ts_ms": self.now}), self.now)
        self.emitted = n

    def open_orders(self, lines: int, per_order: int = 4) -> Iterator[Record]:
        """`lines` open ERP order lines (inside-sales orders keyed in the ERP, never allocated): committed stock."""
        made = 0
        while made < lines:
            cid, pl = self.customers[self.rng.randrange(len(self.customers))]
            self.orders_placed += 1
            skus = sorted({self._sku()[0] for _ in range(per_order)})
            order = _Order(self.next_id, "inside-sales", f"IS-{self.tag}-{self.orders_placed:08d}", cid,
                           [(n + 1, sku, 1) for n, sku in enumerate(skus)], {sku: self._price(sku, pl) for sku in skus})
            self.next_id += 1
            self.headers[order.order_id] = header = self._header(order)
            rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = [
                ("sales_orders", "c", None, header)]
            for ln, sku, qty in order.lines:
                self.skus[sku].committed += qty
                rows.append(("sales_order_lines", "c", None, self._line(order, ln, sku, qty, "open")))
            yield from self._tx("erp", rows)
            made += len(order.lines)
