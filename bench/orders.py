"""Orders flow: channel orders/s through intake validation and status derivation, in replay.

Usage:
  python -m bench.orders [--orders 50000] [--lines 5] [--skus 10000]
The production orders dataflow (bytewax, 1 worker, into a counting sink) over: a catalog (customers,
items, price lists, stock; loaded first, not timed separately), then for every order its channel
order JSON (commerce.orders) and its life in the ERP and WMS as canonical events: header, lines,
an allocation per line, a dispatched shipment with its lines, an invoice. So each order is validated
(every rule, exact ATS counting reservations), reserved and released, routed and walked through
received -> accepted -> allocated -> shipped -> invoiced. The catalog alone is run first and its
time subtracted. --intake-only sends the channel orders without their ERP/WMS life (validation,
reservation and the `received` status only). Prints orders/s and what was published.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from bytewax.testing import TestingSource
from flows.availability import commitments
from flows.orders import orders, sla_clock
from state.sla import Slas

from erpsync.channels import load_channels
from erpsync.runner import tune_gc
from state.records import Emit, RawRecord

CHANNELS = ("b2b-portal", "marketplace", "inside-sales")
T0 = 1_800_000_000_000


class _Clock:
    def __init__(self) -> None:
        self.erp = self.wms = 0

    def pos(self, system: str) -> str:
        if system == "erp":
            self.erp += 1
            return f"{self.erp:016x}/{self.erp:016x}"
        self.wms += 1
        return f"000001/{self.wms:012d}/000000"


def _emit(clock: _Clock, topic: str, value: dict[str, Any], system: str, ts: int) -> Emit:
    return Emit(topic, "k", "x", {**value, "op": "upsert", "source": {
        "system": system, "position": clock.pos(system), "commit_ts_ms": ts}})


def inputs(n_orders: int, n_lines: int, n_skus: int, n_customers: int = 1000,
           lifecycle: bool = True) -> Iterator[Emit | RawRecord]:
    clock = _Clock()
    for c in range(n_customers):
        yield _emit(clock, "canonical.customer", {"customer_id": f"C-{c:06d}", "price_list_id": f"PL-{c % 10}",
                                                  "credit_hold": False, "tax_jurisdiction": "US-TX-AUSTIN"}, "erp", T0)
    for s in range(n_skus):
        sku = f"SKU-{s:06d}"
        yield _emit(clock, "canonical.item", {"sku": sku, "safety_stock": 1, "status": "active"}, "erp", T0)
        for pl in range(10):
            yield _emit(clock, "canonical.price", {"price_list_id": f"PL-{pl}", "sku": sku, "unit_price": "10.0000",
                                                   "valid_from": 19000, "valid_to": None}, "erp", T0)
        yield _emit(clock, "canonical.inventory-position", {"sku": sku, "location": "DC-EAST", "on_hand": 10**9,
                                                            "allocated": 0, "in_transit": 0}, "wms", T0)
    for o in range(n_orders):
        ts = T0 + 1000 + o  # one order a millisecond of event time
        channel, ext = CHANNELS[o % 3], f"O-{o:08d}"
        lines = [{"line_no": n + 1, "sku": f"SKU-{(o * n_lines + n) % n_skus:06d}", "qty": 1 + n % 3,
                  "unit_price": "10.0000"} for n in range(n_lines)]
        doc = {"channel": channel, "external_order_id": ext, "customer_id": f"C-{o % n_customers:06d}",
               "payment_status": "approved", "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP",
               "currency": "USD", "placed_at": "2026-11-27T10:00:00Z", "freight_total": "5.00",
               "discount_total": "0.00", "tax_total": "0.00", "lines": lines}
        yield RawRecord("commerce.orders", 0, o, f"{channel}:{ext}".encode(), json.dumps(doc).encode(), ts)
        if not lifecycle:
            continue
        total = sum(line["qty"] for line in lines) * 10 + 5
        header = {"order_id": o, "channel": channel, "external_order_id": ext, "status": "entered",
                  "order_total": f"{total}.00", "freight_total": "5.00"}
        yield _emit(clock, "canonical.order", header, "erp", ts)
        for line in lines:
            yield _emit(clock, "canonical.order-line", {"order_id": o, "line_no": line["line_no"], "sku": line["sku"],
                                                        "qty": line["qty"], "unit_price": "10.0000",
                                                        "status": "open"}, "erp", ts)
        for line in lines:
            yield _emit(clock, "canonical.allocation", {"allocation_id": o * 100 + line["line_no"], "order_id": o,
                                                        "line_no": line["line_no"], "sku": line["sku"],
                                                        "qty": line["qty"], "status": "allocated"}, "wms", ts)
        yield _emit(clock, "canonical.shipment", {"shipment_id": o, "order_id": o, "carrier": "UPS",
                                                  "tracking_no": f"1Z{o}", "status": "dispatched",
                                                  "freight_cost": "5.00"}, "wms", ts)
        for line in lines:
            yield _emit(clock, "canonical.shipment-line", {"shipment_id": o, "line_no": line["line_no"],
                                                           "sku": line["sku"], "qty": line["qty"]}, "wms", ts)
        yield _emit(clock, "canonical.invoice", {"invoice_id": o, "order_id": o, "invoice_total": f"{total}.00",
                                                 "freight_total": "5.00"}, "erp", ts)


def run(n_orders: int, n_lines: int, n_skus: int, lifecycle: bool = True) -> tuple[float, float, dict[str, int]]:
    """(seconds for the catalog alone, seconds for catalog + orders, output counts)."""
    catalog_s = _run(0, n_lines, n_skus, lifecycle)[0]
    total_s, counts = _run(n_orders, n_lines, n_skus, lifecycle)
    return catalog_s, total_s, counts


def _run(n_orders: int, n_lines: int, n_skus: int, lifecycle: bool) -> tuple[float, dict[str, int]]:
    counts: dict[str, int] = {}

    class Count(DynamicSink[object]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[object]:
            class Part(StatelessSinkPartition[object]):
                def write_batch(self, items: list[object]) -> None:
                    for item in items:
                        key = item.topic if isinstance(item, Emit) else type(item).__name__
                        if isinstance(item, Emit) and item.topic.startswith("order-status."):
                            key = f"status:{item.value['status']}"
                        counts[key] = counts.get(key, 0) + 1

            return Part()

    flow = Dataflow("bench_orders")
    source = list(inputs(n_orders, n_lines, n_skus, lifecycle=lifecycle))
    items = op.input("inp", flow, TestingSource(source, batch_size=1000))
    split = op.branch("is_order", items, lambda x: isinstance(x, RawRecord))
    canonical = split.falses
    out = orders(canonical, commitments(canonical), split.trues, load_channels(), Slas(),  # type: ignore[arg-type]
                 live=False)
    fired = sla_clock(out.deadlines, out.ticks, live=False)
    op.output("count", op.merge("all", out.emits, fired, out.reservations, out.dead_letters, out.ignored), Count())
    tune_gc()
    start = time.perf_counter()
    cli_main(flow, workers_per_process=1)
    return time.perf_counter() - start, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--lines", type=int, default=5)
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--intake-only", action="store_true", help="channel orders only, no ERP/WMS lifecycle")
    args = parser.parse_args()
    catalog_s, total_s, counts = run(args.orders, args.lines, args.skus, not args.intake_only)
    seconds = total_s - catalog_s
    what = "intake only" if args.intake_only else "intake + lifecycle (19 events/order)"
    print(f"orders                        {args.orders} x {args.lines} lines ({args.skus} SKUs, 1000 customers)")
    print(f"orders flow, 1 worker         {args.orders / seconds:,.0f} orders/s, {what}"
          f"  ({total_s:.1f} s, catalog alone {catalog_s:.1f} s subtracted)")
    print(f"accepted (erp.order-intake)   {counts.get('erp.order-intake', 0)}")
    print("final statuses published     ", {k: v for k, v in sorted(counts.items()) if k.startswith("status:")})
    print(f"exceptions                    {counts.get('sync.exceptions', 0)}")


if __name__ == "__main__":
    main()
