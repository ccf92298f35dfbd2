"""Intake latency on the local stack: channel order produced -> its row in the ERP's erp.order_intake.

Usage: python -m bench.intake_latency [--orders 200] [--rate 20] [--wms-rate 0]
Starts `erpsync run` (fresh recovery dir), seeds a catalog with the reference workload, waits for
the pipeline to catch up, then sends clean orders at --rate and records, per order, the time from
the Kafka produce to the row's appearance (polled every 5 ms). --wms-rate adds background WMS
stock updates per second (a busy source): orders then wait for less, since sources tick often.
Prints p50/p99/max (after one unmeasured warm-up order). An order waits until every table intake
validation reads has reached its time, or has been idle for 1 s (flows.orders).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pymysql
from confluent_kafka import Producer

from erpsync.settings import load_settings
from erpsync.simulate import Workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--wms-rate", type=float, default=0)
    args = parser.parse_args()
    settings = load_settings()
    home = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    env = dict(os.environ, ERPSYNC_FLOWS__RECOVERY_DIR=str(home / "recovery"))
    log = (home / "run.log").open("wb")
    pipeline = subprocess.Popen([sys.executable, "-m", "erpsync", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    tag = f"L{int(time.time()) % 100000:05d}"
    stop = threading.Event()
    try:
        work = Workload(settings, seed=4, tag=tag, fault_rate=0.0, downstream_fault_rate=0.0, return_rate=0.0,
                        max_orders=max(1000, args.orders))
        work.seed()
        assert work.wait_ready(300), "the pipeline did not catch up"
        plans = work.scenario.plan_orders(args.orders + 1)
        warm_up, plans = plans[0], plans[1:]
        e, w = settings.erp, settings.wms
        erp = psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                              password=e.password.get_secret_value(), autocommit=True)
        if args.wms_rate:
            def churn() -> None:
                conn = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                                       database=w.dbname, autocommit=True)
                sku = work.scenario.catalog.items[-1].sku
                while not stop.is_set():
                    with conn.cursor() as cur:
                        cur.execute("UPDATE inventory_balances SET in_transit = in_transit + 1 WHERE sku = %s"
                                    " AND location = 'DC-WEST'", (sku,))
                    time.sleep(1 / args.wms_rate)
            threading.Thread(target=churn, daemon=True).start()
        producer = Producer(settings.kafka.client_config())
        # Warm-up, not measured: the first order waits until the pipeline has read every validation
        # table up to its time (a fresh pipeline may still be catching up on other tables' history).
        producer.produce("commerce.orders", key=f"{warm_up.doc['channel']}:{warm_up.doc['external_order_id']}",
                         value=json.dumps(warm_up.doc))
        producer.flush()
        while not erp.execute("SELECT 1 FROM erp.order_intake WHERE external_order_id = %s",
                              (warm_up.doc["external_order_id"],)).fetchone():
            time.sleep(0.05)
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        for plan in plans:
            key = plan.doc["external_order_id"]
            producer.produce("commerce.orders", key=f"{plan.doc['channel']}:{key}", value=json.dumps(plan.doc))
            producer.flush()
            sent[key] = time.time()
            deadline = time.time() + 1 / args.rate
            while time.time() < deadline or (len(seen) < len(sent) and time.time() < sent[key] + 10):
                for (ext,) in erp.execute("SELECT external_order_id FROM erp.order_intake WHERE external_order_id"
                                          " LIKE %s", (f"{tag}-%",)).fetchall():
                    if ext in sent:
                        seen.setdefault(ext, time.time())
                if time.time() >= deadline and len(seen) >= len(sent):
                    break
                time.sleep(0.005)
        in_order = [round((seen[k] - sent[k]) * 1000) for k in sent if k in seen]
        if os.environ.get("BENCH_VERBOSE"):
            print("latencies in send order (ms):", in_order)
        latencies = sorted(in_order)

        def rank(p: float) -> float:  # nearest-rank percentile
            return latencies[max(0, -(-len(latencies) * p // 100) - 1)]

        print(f"orders                        {len(sent)} at {args.rate:g}/s, WMS updates {args.wms_rate:g}/s")
        print(f"produce -> erp.order_intake   p50 {rank(50):.0f} ms, p99 {rank(99):.0f} ms, max {latencies[-1]:.0f} ms"
              f" ({len(latencies)} seen)")
    finally:
        stop.set()
        pipeline.terminate()
        pipeline.wait(30)


if __name__ == "__main__":
    main()
