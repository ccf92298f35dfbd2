"""Distributor scale: catch up a long history, then run steady; do the costs grow with the history? (issue 13)

Usage: python -m bench.history_scale [--history 300000] [--rate 1000] [--seconds 60] [--workers 1] [--checkout DIR]
Needs `erpsync stack up`. A history of N records of ``bench.workload``'s mix (catalog with stock,
orders through their life, stock movements, deletes, duplicates, transaction metadata; about one
SKU per 35 records) is produced, as Debezium would write it, into fresh raw topics (``bench.live``:
connectors paused); it ends six hours ago, so every SLA of it has passed. `erpsync run` with
recovery (a new directory) catches up: until a sentinel change written after the history is in
Redis. Then a steady phase: 1,000 fresh SKUs are created, and `--rate` WMS changes per second (one
balance update per transaction, timestamped now) raise their stock one unit at a time for
`--seconds`. Printed:

- catch-up records/s (history records over the time from start to the sentinel in Redis);
- snapshot bytes per epoch in the steady phase (the recovery store's rows of each epoch, read
  while they are the newest of their key), median and max;
- epoch pause: bytewax closes an epoch every `flows.snapshot_interval_s`; the time between two
  epochs beyond that interval is what snapshotting held the dataflow back, p50 and p99;
- freshness in the steady phase: produce (the source commit) -> the value visible in Redis
  (HMGET ats:b2b-portal every 2 ms, of the SKUs with a change not yet seen there), p50, p99, max;
- peak resident memory of `erpsync run`.
At the same rate the snapshot bytes and the pause must not grow with N (issue 13: within 25%
from 1M to 5M), and p99 freshness stays under 1 s.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench import live
from bench.workload import TOPICS, Record, Workload, _Sku
from connectors.redis import client as redis_client
from erpsync.settings import Settings, load_settings

HOUR_MS = 3_600_000
FRESH = 1000  # SKUs the steady phase changes


class Recovery:
    """Reads the recovery store of a running pipeline: snapshot bytes per epoch, and when epochs close."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bytes: dict[int, int] = {}  # epoch -> bytes of its snapshots (largest seen)
        self.closed: list[tuple[int, float]] = []  # (frontier, when first seen)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Recovery:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(0.02):
            parts = sorted(self.directory.glob("part-*.sqlite3"))
            if not parts:
                continue
            try:
                frontier = 0
                sizes: dict[int, int] = {}
                for part in parts:
                    db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=0.5)
                    try:
                        frontier = max(frontier, db.execute("SELECT max(worker_frontier) FROM fronts").fetchone()[0]
                                       or 0)
                        if not self.closed or frontier != self.closed[-1][0] or len(self.closed) % 10 == 0:
                            for epoch, size in db.execute("SELECT snap_epoch, sum(length(ser_change)) FROM snaps "
                                                          "WHERE snap_epoch >= ? GROUP BY snap_epoch",
                                                          (frontier - 2,)):
                                sizes[epoch] = sizes.get(epoch, 0) + (size or 0)
                    finally:
                        db.close()
            except sqlite3.Error:
                continue
            now = time.perf_counter()
            if not self.closed or frontier > self.closed[-1][0]:
                self.closed.append((frontier, now))
            for epoch, size in sizes.items():
                self.bytes[epoch] = max(self.bytes.get(epoch, 0), size)

    def since(self, t0: float) -> tuple[list[int], list[float]]:
        """(snapshot bytes of each epoch closed after t0, intervals between the epochs closed after t0)."""
        closed = [(f, t) for f, t in self.closed if t >= t0]
        epochs = [f for f, _ in closed[1:]]
        intervals = [b[1] - a[1] for a, b in zip(closed, closed[1:], strict=False)]
        return [self.bytes.get(e - 1, 0) for e in epochs], intervals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--checkout", type=Path, help="run the pipeline of this checkout (e.g. a worktree of an "
                        "older commit: before/after)")
    args = parser.parse_args()
    settings = load_settings()
    work = Path(tempfile.mkdtemp(prefix="erpsync-history-"))
    tag = f"H{int(time.time()) % 1_000_000}"
    skus = max(100, args.history // 35)
    # Each record moves the clock less than a millisecond on average: the history ends before now - 6 h.
    w = Workload(skus=skus, customers=min(1000, skus), tag=tag, start_ms=int(time.time() * 1000) - 6 * HOUR_MS
                 - args.history)
    live.pause_connectors(settings, True)
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 5, "compression.type": "lz4"})
    try:
        live.reset_topics(settings, [Record(t, None, None, 0) for t in TOPICS])
        start = time.perf_counter()
        n = 0
        batch: list[Record] = []
        for r in w.records(args.history):
            batch.append(r)
            if len(batch) == 10_000:
                live.send(producer, batch)
                n += len(batch)
                batch = []
        live.send(producer, batch)
        sentinel = f"SKU-{tag}-SENTINEL"
        live.send(producer, _new_skus(w, [sentinel], 777))
        producer.flush(120)
        print(f"history                       {args.history:,} records ({skus:,} SKUs), produced in "
              f"{time.perf_counter() - start:.0f} s, tag {tag}", flush=True)
        steady(settings, w, producer, args, work, sentinel)
    finally:
        live.pause_connectors(settings, False)
    print(f"work directory                {work}")


def _new_skus(w: Workload, skus: list[str], on_hand: int) -> list[Record]:
    """Items (ERP) and their DC-EAST stock (WMS) for new SKUs, timestamped now."""
    w.now = max(w.now, int(time.time() * 1000))
    out: list[Record] = []
    items, balances = [], []
    for sku in skus:
        s = w.skus[sku] = _Sku("10.0000", 0)
        s.stock["DC-EAST"] = [on_hand, 0, 0]
        items.append(("items", "c", None, w._item(sku, s)))
        balances.append(("inventory_balances", "c", None, w._balance(sku, "DC-EAST", s.stock["DC-EAST"])))
    out += w._tx("erp", items)
    out += w._tx("wms", balances)
    return out


def steady(settings: Settings, w: Workload, producer: Producer, args: Any, work: Path, sentinel: str) -> None:
    store = redis_client(settings, reader=True)
    with live.pipeline(args.workers, work, args.checkout) as running:
        proc = running.proc
        recovery = Recovery(running.recovery).start()
        start = time.perf_counter()
        peak = 0.0
        while store.hget("ats:b2b-portal", sentinel) != b"777":
            if proc.poll() is not None:
                raise SystemExit(f"erpsync run exited; see the logs in {work}")
            peak = max(peak, live.rss_mib(proc.pid)[1])
            time.sleep(0.25)
        caught_up = time.perf_counter() - start
        print(f"catch-up                      {args.history / caught_up:,.0f} records/s ({caught_up:.0f} s, start-up "
              f"included; CPU {live.cpu_seconds(proc.pid):.0f} s)", flush=True)

        fresh = [f"SKU-{w.tag}-FRESH-{i:04d}" for i in range(FRESH)]
        live.send(producer, _new_skus(w, fresh, 1000))
        producer.flush(30)
        while any(v is None for v in store.hmget("ats:b2b-portal", fresh)):
            time.sleep(0.1)
        pending: dict[str, deque[tuple[int, float]]] = {s: deque() for s in fresh}
        lock = threading.Lock()
        latencies: list[float] = []
        done = threading.Event()

        waiting: set[str] = set()  # SKUs with a change not yet seen in Redis: only they are polled

        def read() -> None:
            while not done.is_set() or any(pending.values()):
                with lock:
                    skus = sorted(waiting)
                values = store.hmget("ats:b2b-portal", skus) if skus else []
                now = time.perf_counter()
                with lock:
                    for sku, raw in zip(skus, values, strict=True):
                        queue = pending[sku]
                        seen = int(raw) if raw is not None else -1
                        while queue and queue[0][0] <= seen:
                            latencies.append(now - queue.popleft()[1])
                        if not queue:
                            waiting.discard(sku)
                time.sleep(0.002)
                if done.is_set() and time.perf_counter() > end + 30:
                    break

        reader = threading.Thread(target=read, daemon=True)
        # Transactions stamped at the wall clock: the workload's own clock moves about 1.9 ms per
        # transaction (its gap, then its rows), ahead of real time above ~530 transactions/s, and the
        # pipeline would rightly wait for the future (the idle sources promise only up to now).
        w.gap = 0
        steady_start = time.perf_counter()
        end = steady_start + args.seconds
        reader.start()
        n = 0
        while (now := time.perf_counter()) < end:
            target = steady_start + n / args.rate
            if now < target:
                time.sleep(target - now)
            sku = fresh[n % FRESH]
            b = w.skus[sku].stock["DC-EAST"]
            before = w._balance(sku, "DC-EAST", b)
            b[0] += 1
            w.now = max(w.now, int(time.time() * 1000))
            records = w._tx("wms", [("inventory_balances", "u", before, w._balance(sku, "DC-EAST", b))])
            live.send(producer, records)
            producer.poll(0)
            with lock:
                pending[sku].append((b[0], time.perf_counter()))
                waiting.add(sku)
            n += 1
        producer.flush(30)
        done.set()
        reader.join(40)
        peak = max(peak, live.rss_mib(proc.pid)[1])
        recovery.stop.set()
        sizes, intervals = recovery.since(steady_start + 2 * settings.flows.snapshot_interval_s)
    lost = sum(len(q) for q in pending.values())
    lat = sorted(latencies)
    nominal = settings.flows.snapshot_interval_s
    pauses = sorted(max(0.0, i - nominal) for i in intervals)
    print(f"steady phase                  {n:,} WMS changes in {args.seconds:.0f} s ({n / args.seconds:,.0f}/s); "
          f"not visible after 30 s: {lost}")
    if sizes:
        print(f"snapshot bytes per epoch      median {statistics.median(sizes) / 1e6:.2f} MB, "
              f"max {max(sizes) / 1e6:.2f} MB ({len(sizes)} epochs)")
    if pauses:
        print(f"epoch pause (beyond {nominal:g} s)    p50 {_q(pauses, 0.5) * 1000:,.0f} ms, "
              f"p99 {_q(pauses, 0.99) * 1000:,.0f} ms")
    if lat:
        print(f"freshness produce -> Redis    p50 {_q(lat, 0.5) * 1000:,.0f} ms, p99 {_q(lat, 0.99) * 1000:,.0f} ms, "
              f"max {lat[-1] * 1000:,.0f} ms")
    print(f"peak resident (erpsync run)   {peak:,.0f} MiB")


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


if __name__ == "__main__":
    main()
