"""Available-to-sell at scale, in this process: pipeline throughput, and resident memory of a distributor's state.

Usage:
  python -m bench.availability --throughput [--records 300000] [--skus N]
  python -m bench.availability --memory [--skus 1000000] [--open-lines 1000000]
Both run the whole production dataflow (every flow: canonicalize, network, intake, ATS, order
status, timers; ``bench.inprocess``) over ``bench.workload`` records, 1 worker.

Throughput: the realistic mix (catalog, then orders through their life, stock movements, deletes,
duplicates, transaction metadata); records/s and records per CPU-second, and what was published.
Memory: the catalog with stock at all three locations of every SKU, then `--open-lines` open ERP
order lines (committed stock); the process's peak resident size (the state is full at the end, when
the last line is in). Issue 13's figure: 1M SKUs x 3 locations + 1M open order lines, all flows,
under 2 GiB. The records are generated in a child process and handed over through a pipe in
batches: the generator models the sources (every SKU's stock, every order), which at 1M SKUs is
about a gigabyte of its own, and the figure is the pipeline's process alone. The generator's peak
is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import resource
from collections.abc import Iterator
from multiprocessing.connection import Connection

from bench import inprocess
from bench.workload import CATALOG_TOPICS, TOPICS, Record, Workload

HANDOVER = 5000  # records per batch through the pipe


def _generate(conn: Connection, skus: int, open_lines: int) -> None:
    """The catalog with stock at three locations of every SKU, then `open_lines` open order lines."""
    w = Workload(skus=skus, customers=1000, locations_per_sku=(3,))
    records = itertools.chain(itertools.chain.from_iterable(w.catalog()), w.open_orders(open_lines))
    while batch := list(itertools.islice(records, HANDOVER)):
        conn.send(batch)
    conn.send(None)
    conn.close()


def _received(conn: Connection) -> Iterator[Record]:
    while (batch := conn.recv()) is not None:
        yield from batch


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--throughput", action="store_true")
    mode.add_argument("--memory", action="store_true")
    parser.add_argument("--records", type=int, default=300_000, help="--throughput: records of the mix")
    parser.add_argument("--skus", type=int)
    parser.add_argument("--open-lines", type=int, default=1_000_000, help="--memory: open ERP order lines")
    args = parser.parse_args()
    if args.throughput:
        skus = args.skus or max(100, args.records // 35)
        seconds, cpu, counts = inprocess.run(Workload(skus=skus, customers=min(1000, skus)).records(args.records),
                                             TOPICS)
        print(f"records                       {args.records:,} ({skus:,} SKUs; catalog, then the daily mix)")
        print(f"pipeline, 1 worker            {args.records / seconds:,.0f} records/s, "
              f"{args.records / cpu:,.0f} records per CPU-second ({seconds:.1f} s)")
        print("published                    ", {t: n for t, n in sorted(counts.items())
                                                 if t.startswith(("availability.", "order-status.", "erp.order"))})
        return
    skus = args.skus or 1_000_000
    receiving, sending = multiprocessing.Pipe(duplex=False)
    generator = multiprocessing.Process(target=_generate, args=(sending, skus, args.open_lines), daemon=True)
    generator.start()
    sending.close()
    n = [0]

    def counted() -> object:
        for r in _received(receiving):
            n[0] += 1
            yield r

    topics = (*CATALOG_TOPICS, "erp.erp.sales_orders", "erp.erp.sales_order_lines")
    seconds, cpu, counts = inprocess.run(counted(), topics)  # type: ignore[arg-type]
    generator.join()
    print(f"state                         {skus:,} SKUs x 3 locations (item, 2 prices each), "
          f"{args.open_lines:,} open order lines; all flows")
    print(f"peak resident                 {inprocess.peak_rss_mib():,.0f} MiB (the pipeline's process; the record "
          f"generator's: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MiB)")
    print(f"load                          {n[0]:,} records in {seconds:.0f} s ({n[0] / cpu:,.0f} per CPU-second)")
    print(f"published                     {counts.get('availability.b2b-portal', 0):,} b2b-portal ATS values")


if __name__ == "__main__":
    main()
