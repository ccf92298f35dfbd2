"""Orders through intake and their whole ERP/WMS life, in this process: channel orders/s, and where they ended.

Usage: python -m bench.orders [--records 300000] [--skus N]
The whole production dataflow (``bench.inprocess``, 1 worker) over ``bench.workload``'s mix: each
channel order is validated against the state as of its time (every rule, exact ATS counting the
reservations of earlier accepted orders), reserved, imported by the ERP (reservation released,
stock committed in one transaction), allocated, picked, shipped and invoiced, or cancelled, trimmed
or de-allocated on the way; 4% are priced off the price list and rejected, 1% are submitted twice.
Prints channel orders/s (with everything else the mix carries), records/s, and the published
verdicts and statuses.
"""

from __future__ import annotations

import argparse

from bench import inprocess
from bench.workload import TOPICS, Workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--skus", type=int)
    args = parser.parse_args()
    skus = args.skus or max(100, args.records // 35)
    workload = Workload(skus=skus, customers=min(1000, skus))
    seconds, cpu, counts = inprocess.run(workload.records(args.records), TOPICS)
    orders = workload.orders_placed
    print(f"records                       {args.records:,} ({orders:,} channel orders, {skus:,} SKUs)")
    print(f"orders flow (whole pipeline)  {orders / seconds:,.0f} channel orders/s, {orders / cpu:,.0f} per "
          f"CPU-second; {args.records / seconds:,.0f} records/s")
    print(f"accepted (erp.order-intake)   {counts.get('erp.order-intake', 0):,}")
    print("order status records         ", {t: n for t, n in sorted(counts.items()) if t.startswith("order-status.")})
    print(f"exceptions                    {counts.get('sync.exceptions', 0):,}")


if __name__ == "__main__":
    main()
