"""Availability flow: throughput in replay, and resident memory with many SKUs in state.

Usage:
  python -m bench.availability --throughput [--events 1000000] [--skus 100000]
  python -m bench.availability --memory [--skus 1000000] [--with-orders]
Throughput: canonical inventory-position updates (3 locations per SKU, items loaded first) through
the production availability dataflow (bytewax, 1 worker) into a counting sink, events/s.
Memory: 1 item + 3 locations for every SKU; the process's peak resident size (ru_maxrss), reached
when the last SKU enters state (bytewax frees the state when the run ends). --with-orders adds the
orders flow, whose network step and intake desk also hold every SKU (the whole pipeline's cost).
Events are generated lazily, so the input itself takes no memory.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from collections.abc import Iterator

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from bytewax.testing import TestingSource
from flows.availability import availability, commitments
from flows.orders import orders
from state.sla import Slas

from bench.canonicalize import _Count
from erpsync.channels import load_channels
from erpsync.runner import tune_gc
from state.records import Emit

LOCATIONS = ("DC-EAST", "DC-WEST", "DC-CENTRAL")


def _event(topic: str, key: list[object], value: dict[str, object], position: int, ts: int) -> Emit:
    return Emit(topic, json.dumps(key), "x", {**value, "op": "upsert", "source": {
        "system": "wms" if "inventory" in topic else "erp", "position": f"000001/{position:012d}/000000",
        "commit_ts_ms": ts}})


def events(skus: int, updates: int, seed: int = 3) -> Iterator[Emit]:
    rng = random.Random(seed)
    position, ts = 0, 1_800_000_000_000
    for i in range(skus):
        position += 1
        yield _event("canonical.item", [f"SKU-{i:07d}"], {"sku": f"SKU-{i:07d}", "safety_stock": 2,
                                                           "status": "active"}, position, ts)
        for loc in LOCATIONS:
            position += 1
            yield _event("canonical.inventory-position", [f"SKU-{i:07d}", loc], {
                "sku": f"SKU-{i:07d}", "location": loc, "on_hand": 100, "allocated": 0, "in_transit": 0},
                position, ts)
    for _ in range(updates):
        i, loc = rng.randrange(skus), rng.choice(LOCATIONS)
        position, ts = position + 1, ts + 1
        yield _event("canonical.inventory-position", [f"SKU-{i:07d}", loc], {
            "sku": f"SKU-{i:07d}", "location": loc, "on_hand": rng.randrange(0, 500), "allocated": rng.randrange(0, 5),
            "in_transit": 0}, position, ts)


def run(skus: int, updates: int, *, materialize: bool, with_orders: bool = False) -> tuple[float, int]:
    """Time the flow; materialize=True builds the input first, so only the flow is timed.

    with_orders: the orders flow too (no channel orders), so its per-SKU network step and the intake
    desk's view of every SKU are in memory as they are in the whole pipeline.
    """
    counter = _Count()
    flow = Dataflow("bench_availability")
    source = list(events(skus, updates)) if materialize else events(skus, updates)
    canonical = op.input("inp", flow, TestingSource(source, batch_size=1000))
    committed = commitments(canonical)
    out = availability(canonical, committed, None, load_channels())
    if with_orders:
        governed = orders(canonical, committed, op.filter_map("no_orders", canonical, lambda _: None),
                          load_channels(), Slas(), live=False)
        out = op.merge("all", out, governed.emits, governed.reservations)
    op.output("count", out, counter)
    tune_gc()
    start = time.perf_counter()
    cli_main(flow, workers_per_process=1)
    return time.perf_counter() - start, counter.n


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--throughput", action="store_true")
    mode.add_argument("--memory", action="store_true")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int)
    parser.add_argument("--with-orders", action="store_true", help="--memory: the orders flow's SKU state too")
    args = parser.parse_args()
    if args.throughput:
        skus = args.skus or 100_000
        updates = max(0, args.events - 4 * skus)
        seconds, published = run(skus, updates, materialize=True)
        total = 4 * skus + updates
        print(f"events                        {total}  ({skus} SKUs x 3 locations + items, then updates)")
        print(f"availability, 1 worker        {total / seconds:,.0f} events/s")
        print(f"records published             {published}")
    else:
        skus = args.skus or 1_000_000
        seconds, published = run(skus, 0, materialize=False, with_orders=args.with_orders)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"SKUs in state                 {skus} x {len(LOCATIONS)} locations (+ item each)"
              + (", availability and orders flows" if args.with_orders else ", availability flow"))
        print(f"peak resident (state full)    {peak:,.0f} MiB")
        print(f"load rate                     {4 * skus / seconds:,.0f} events/s")


if __name__ == "__main__":
    main()
