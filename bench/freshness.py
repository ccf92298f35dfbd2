"""Freshness on the local stack: WMS commit -> value visible in Redis (HGET ats:<channel> <sku>).

Usage: python -m bench.freshness [--rate 500] [--seconds 60] [--skus 1000]
Needs `erpsync stack up`; starts its own `erpsync run`. A writer thread UPDATEs
wms.inventory_balances at the given rate (each update raises one SKU's on_hand, so its ATS on
b2b-portal rises); a reader polls Redis every 2 ms. An update counts as visible when its SKU's
Redis value reaches it (a newer value coalesced over it counts too). Prints p50/p99/max latency,
and splits it at the change record's Kafka timestamp (read from the raw topic): commit -> Kafka is
Debezium's capture, Kafka -> Redis is the pipeline's share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import psycopg
import pymysql
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from connectors.redis import client as redis_client
from erpsync.settings import load_settings
from flows.canonicalize import DELAYED

BASE = 1_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=10,
                        help="at least this many seconds at the rate before measuring, and until caught up")
    args = parser.parse_args()
    settings = load_settings()
    tag = f"FRESH{int(time.time())}"
    skus = [f"SKU-{tag}-{i:05d}" for i in range(args.skus)]
    e, w = settings.erp, settings.wms
    with psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                         password=e.password.get_secret_value(), autocommit=True) as erp:
        with erp.cursor() as cur:
            cur.executemany("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'freshness', 0)",
                            [(s,) for s in skus])
    wms = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                          database=w.dbname, autocommit=True)
    with wms.cursor() as cur:
        cur.executemany("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-EAST', %s)",
                        [(s, BASE) for s in skus])
    store = redis_client(settings, reader=True)

    work = Path(tempfile.mkdtemp(prefix="erpsync-fresh-"))
    env = dict(os.environ, ERPSYNC_FLOWS__RECOVERY_DIR=str(work / "recovery"))
    pipeline = subprocess.Popen([sys.executable, "-m", "erpsync", "run"], env=env,
                                stdout=(work / "run.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900  # a stack's whole history first
        while time.monotonic() < deadline:  # caught up: every seeded SKU published
            if all(v is not None for v in store.hmget("ats:b2b-portal", skus)):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"pipeline did not catch up; see {work / 'run.log'}")

        pending: dict[str, deque[tuple[int, float, float]]] = {s: deque() for s in skus}
        lock = threading.Lock()
        latencies: list[tuple[float, float]] = []  # (commit time, latency)
        seen_at: dict[tuple[str, int], tuple[float, float]] = {}  # (sku, on_hand) -> (commit, visible), wall clock
        captured: dict[tuple[str, int], int] = {}  # (sku, on_hand) -> the change record's Kafka timestamp
        done = threading.Event()
        capture = Consumer(settings.kafka.client_config() | {"group.id": f"bench-{tag}", "enable.auto.commit": False})
        raw_topic = "wms.wms.inventory_balances"
        parts = capture.list_topics(raw_topic, timeout=10).topics[raw_topic].partitions
        capture.assign([TopicPartition(raw_topic, p, OFFSET_END) for p in parts])

        def read_capture() -> None:
            while not done.is_set() or len(captured) < n:
                for msg in capture.consume(500, 0.2):
                    if msg.error() is None:
                        after = json.loads(msg.value() or b"null")["after"] or {}
                        captured[(str(after.get("sku")), int(after.get("on_hand") or 0))] = msg.timestamp()[1]
                if done.is_set() and time.monotonic() > end + 30:
                    break
            capture.close()

        def read() -> None:
            while not (done.is_set() and not any(pending.values())):
                values = store.hmget("ats:b2b-portal", skus)
                now = time.monotonic()
                with lock:
                    for sku, raw in zip(skus, values, strict=True):
                        queue = pending[sku]
                        seen = int(raw) if raw is not None else -1
                        while queue and queue[0][0] <= seen:
                            value, committed_at, committed_wall = queue.popleft()
                            latencies.append((committed_at, now - committed_at))
                            seen_at[(sku, value)] = (committed_wall, committed_wall + now - committed_at)
                time.sleep(0.002)
                if done.is_set() and time.monotonic() > end + 30:
                    break

        reader = threading.Thread(target=read)
        reader.start()
        n = 0
        capturer = threading.Thread(target=read_capture)
        capturer.start()
        values = {s: BASE for s in skus}
        interval = 1 / args.rate
        start = time.monotonic()
        # A fresh pipeline first re-reads the topics' history; measure once it is caught up: the
        # updates of the last 2 s were all visible within 500 ms.
        measured_from = end = float("inf")
        with wms.cursor() as cur:
            while (now := time.monotonic()) < end:
                if measured_from == float("inf") and now - start >= args.warmup and n % 250 == 0:
                    with lock:
                        recent = [lat for c, lat in latencies if c > now - 2.5]
                    if (len(recent) > args.rate and max(recent) < 0.5) or now - start > 300:
                        measured_from, end = now, now + args.seconds
                target = start + n * interval
                if now < target:
                    time.sleep(target - now)
                sku = skus[n % len(skus)]
                values[sku] += 1
                cur.execute("UPDATE inventory_balances SET on_hand = %s WHERE sku = %s AND location = 'DC-EAST'",
                            (values[sku], sku))
                committed, committed_wall = time.monotonic(), time.time()
                with lock:
                    pending[sku].append((values[sku], committed, committed_wall))
                n += 1
        elapsed = time.monotonic() - start
        done.set()
        reader.join()
        capturer.join()
        lost = sum(len(q) for q in pending.values())
        lat = sorted(latency for committed_at, latency in latencies if committed_at >= measured_from)
        print(f"updates committed             {n} in {elapsed:.1f} s ({n / elapsed:,.0f}/s), "
              f"the first {measured_from - start:.0f} s as warm-up (catching up)")
        print(f"measured                      {len(lat)} (not visible after 30 s: {lost})")
        print(f"commit -> Redis p50           {statistics.median(lat) * 1000:,.0f} ms")
        print(f"commit -> Redis p99           {lat[int(len(lat) * 0.99) - 1] * 1000:,.0f} ms")
        print(f"commit -> Redis max           {lat[-1] * 1000:,.0f} ms")
        measured_wall = time.time() - (time.monotonic() - measured_from)
        split = [(ts / 1000 - c, v - ts / 1000) for key, (c, v) in seen_at.items()
                 if c >= measured_wall and (ts := captured.get(key))]
        if split:
            debezium, pipeline_share = (sorted(x) for x in zip(*split, strict=True))
            for name, xs in (("commit -> Kafka (Debezium)", debezium), ("Kafka -> Redis (pipeline)", pipeline_share)):
                print(f"{name:<29} p50 {statistics.median(xs) * 1000:,.0f} ms, "
                      f"p99 {xs[int(len(xs) * 0.99) - 1] * 1000:,.0f} ms ({len(xs)} updates)")
        delayed = sum(int(m) for m in re.findall(rf": (\d+) {re.escape(DELAYED)}",
                                                 (work / "run.log").read_text(errors="replace")))
        print(f"records delayed               {delayed} (arrived behind their partition's promise; "
              f"see flows.idle_grace_ms)")
        if os.environ.get("FRESHNESS_TRACE"):
            worst: dict[int, float] = {}
            for committed_at, latency in latencies:
                second = int(committed_at - start)
                worst[second] = max(worst.get(second, 0), latency)
            print("worst latency per second:", {k: round(v * 1000) for k, v in sorted(worst.items())})
    finally:
        pipeline.send_signal(signal.SIGINT)
        pipeline.wait(30)
        wms.close()


if __name__ == "__main__":
    main()
