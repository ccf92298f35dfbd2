"""HTTP push delivery against the commerce API process: throughput at the rate limit, latency, an outage.

Usage: python -m bench.channel_push [--updates 100000] [--rate 50] [--burst 10] [--batch 100]
       [--outage 30]
Needs the ops database of the local stack (`erpsync stack up`): acknowledgements are persisted as
in production. The delivery engine (connectors.http_channels) runs in this process; the platform
(erpsync.commerce_api) in its own, with the given rate limit. Three phases:

1. saturation: --updates values of distinct SKUs handed over at once; requests/s the platform
   received vs its limit (target >= 95%), from its own request log;
2. below the limit: 1,000 updates/s over 10,000 SKUs for 15 s; latency handed over -> acknowledged;
3. outage: the platform stopped for --outage seconds while 2,500 updates/s to 10,000 SKUs go on;
   the backlog then (target: at most one value waiting per touched SKU) and the time to drain it
   after the platform is back.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from connectors import ops_db
from connectors.http_channels import Delivery, Engine
from erpsync.commerce_api import CommerceApi
from erpsync.settings import load_settings
from state.availability import AVAILABILITY_SCHEMA
from state.channels import Channel
from state.records import Emit


def value(channel: str, sku: str, ats: int, version: int) -> Emit:
    now = int(time.time() * 1000)
    return Emit(f"availability.{channel}", sku, AVAILABILITY_SCHEMA, {
        "channel": channel, "sku": sku, "ats": ats, "status": "active", "positions": {"wms": f"{version:012d}"},
        "version": version, "event_time_ms": now})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def drain(d: Delivery, timeout_s: float = 600) -> float:
    t0 = time.monotonic()
    while sum(d.counts()) and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    return time.monotonic() - t0


def steady(engine: Engine, channel: str, rate: float, seconds: float, skus: int, version: int,
           touched: dict[str, int]) -> tuple[int, int]:
    """Hand over `rate` updates/s for `seconds`, 10 ms at a time; returns (updates, next version)."""
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - n
        if due > 0:
            batch = []
            for _ in range(due):
                sku = f"B-{n % skus:06d}"
                touched[sku] = n
                batch.append(value(channel, sku, n, version))
                version += 1
                n += 1
            engine.offer(batch)
        time.sleep(0.01)
    return n, version


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50.0, help="the platform's limit, requests/s")
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    args = parser.parse_args()
    settings = load_settings()
    ops_db.migrate(settings)
    work = Path(tempfile.mkdtemp(prefix="erpsync-push-bench-"))
    api = CommerceApi(18_000 + uuid.uuid4().int % 1000, work / "api.jsonl", rate=args.rate, burst=args.burst).start()
    channel = Channel.model_validate({"id": f"bench-{uuid.uuid4().hex[:8]}", "outputs": {"push": {
        "url": f"{api.url}/webhook", "batch_size": args.batch, "rate_per_s": args.rate, "burst": args.burst,
        "breaker_reset_s": 2, "timeout_s": 5, "concurrency": args.concurrency}}})
    engine = Engine(settings, [channel], None).start()
    d = engine.deliveries[channel.id]
    out: dict[str, Any] = {}
    try:
        # 1. saturation
        t0 = time.monotonic()
        engine.offer([value(channel.id, f"A-{i:06d}", i, 1) for i in range(args.updates)])
        handed = time.monotonic() - t0
        took = drain(d)
        log = sorted(r["t"] for r in api.state()["request_log"] if r["status"] == 200)
        achieved = (len(log) - 1) / (log[-1] - log[0])
        out["saturation"] = (f"{args.updates:,} updates handed over in {handed:.2f} s, delivered in {took:.1f} s: "
                             f"{len(log):,} requests, {achieved:.1f} requests/s = {100 * achieved / args.rate:.1f}% "
                             f"of the {args.rate:g}/s limit; {args.updates / took:,.0f} values/s; "
                             f"429s: {api.state(summary=True)['by_status'].get('429', 0)}")

        # 2. below the limit
        d.stats.latencies.clear()
        touched: dict[str, int] = {}
        n, version = steady(engine, channel.id, 1000, 15, 10_000, 1, touched)
        drain(d)
        lat = [ms for _, ms in d.stats.latencies]
        out["latency"] = (f"{n:,} updates at 1,000/s over 10,000 SKUs: handed over -> acknowledged p50 "
                          f"{percentile(lat, 0.5):.0f} ms, p99 {percentile(lat, 0.99):.0f} ms, max {max(lat):.0f} ms")

        # 3. outage
        api.stop()
        touched.clear()
        n, version = steady(engine, channel.id, 2500, args.outage, 10_000, version, touched)
        pending, inflight = d.counts()
        owed = d.owed_keys()
        api.start()
        took = drain(d)
        final = api.state()["accepted"]
        wrong = sum(1 for sku, ats in touched.items() if final[f"availability/{sku}"]["value"] != ats)
        out["outage"] = (f"{n:,} updates to {len(touched):,} SKUs during a {args.outage:.0f} s outage: backlog "
                         f"{pending:,} values waiting + {inflight:,} in flight, {owed:,} keys owed "
                         f"(<= {len(touched):,} touched: {'yes' if pending <= len(touched) else 'NO'}); "
                         f"drained in {took:.1f} s after the platform came back; older writes: "
                         f"{len(api.state(summary=True)['older_writes'])}; SKUs whose final value is not the "
                         f"last handed over: {wrong}")
    finally:
        engine.stop()
        api.stop()
        with ops_db.connect(settings) as conn:  # the bench channel leaves nothing behind
            for table in ("sync.channel_deliveries", "sync.channel_status"):
                conn.execute(f"DELETE FROM {table} WHERE channel = %s", (channel.id,))
            conn.execute("DELETE FROM sync.exceptions WHERE detail->>'channel' = %s", (channel.id,))
            conn.commit()
    for name, line in out.items():
        print(f"{name:<11} {line}")


if __name__ == "__main__":
    main()
