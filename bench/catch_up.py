"""Catching up a backlog: `erpsync run` from fresh state over N records already in the raw topics.

Usage: python -m bench.catch_up [--records 200000] [--skus N] [--workers 1 2] [--processes 1] [--runs 1]
Needs `erpsync stack up`. The backlog is ``bench.workload``'s mix (catalog, orders through their
life, stock movements, deletes, duplicates, Debezium transaction metadata), produced into the raw
topics with its timestamps (``bench.live``). For each process and worker count (`--processes 2`: a
local cluster, `erpsync run --processes 2`, of that many workers each), `erpsync run` starts with a new
recovery directory and the bench polls, every half second, until every output holds the value a
replay of the same records ends with: ATS of every SKU in Redis for every channel, every order's
status and every exception's state in the ops database, and the last value of every key of the JSON
channel's compacted topics (availability and order status: the Kafka outputs go through the same
transactional producer for every channel). It prints events/s from start to final (start-up
included), the pipeline's CPU seconds (all its processes), and the ratio to a floor measured in the same run: one
confluent-kafka consumer reading the backlog and JSON-parsing every key and value.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from bench import live
from erpsync.settings import Settings, load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--skus", type=int, help="default: records / 35")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="process counts (more than 1: a local cluster of that many processes)")
    parser.add_argument("--runs", type=int, default=1, help="runs per worker count (the median is printed)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a run may take to be final")
    parser.add_argument("--checkout", type=Path, action="append", default=[],
                        help="also run the pipeline of this checkout (e.g. a worktree of main: before/after)")
    args = parser.parse_args()
    settings = load_settings()
    work = Path(tempfile.mkdtemp(prefix="erpsync-catch-up-"))
    tag = f"CU{int(time.time()) % 1_000_000}"
    records, changes = live.backlog(settings, args.records, skus=args.skus or max(100, args.records // 35), tag=tag)
    dump = work / "backlog.jsonl"
    live.write_dump(records, dump)
    expected = live.Expected.of_replay(dump, work)
    print(f"backlog                       {len(records):,} records ({changes:,} change events, the rest Debezium "
          f"transaction metadata), tag {tag}")
    print(f"final values to reach         {sum(len(v) for v in expected.ats.values()):,} Redis ATS, "
          f"{len(expected.status):,} order statuses, {len(expected.exceptions):,} exceptions, "
          f"{len(expected.json_topics):,} keys of the JSON channel's topics")
    print(f"replay of the same records    {len(records) / expected.replay_s:,.0f} records/s "
          f"({expected.replay_s:.1f} s, whole process)")
    live.pause_connectors(settings, True)
    try:
        topics = live.reset_topics(settings, records)
        produced_s = live.produce(settings, records)
        print(f"produced                      in {produced_s:.1f} s")
        floor_s, floor_cpu = live.floor(settings, topics, len(records))
        floor_rate = len(records) / floor_s
        print(f"floor (consume + JSON parse)  {floor_rate:,.0f} records/s, {len(records) / floor_cpu:,.0f} "
              "records per CPU-second")
        for checkout in [None, *args.checkout]:
            for processes, workers in itertools.product(args.processes, args.workers):
                shape = f"{workers} worker(s)" if processes == 1 else f"{processes} processes x {workers} worker(s)"
                rates, cpus = [], []
                for _ in range(args.runs):
                    seconds, cpu = run_once(settings, expected, workers, work, args.timeout, checkout, processes)
                    rates.append(len(records) / seconds)
                    cpus.append(cpu)
                    print(f"  run, {shape}            {seconds:.1f} s to final, CPU {cpu:.1f} s")
                rate, cpu = statistics.median(rates), statistics.median(cpus)
                print(f"erpsync run, {shape}{f' ({checkout})' if checkout else ''}: {rate:,.0f} records/s "
                      f"({changes / len(records) * rate:,.0f} change events/s), {len(records) / cpu:,.0f} records "
                      f"per CPU-second, ratio to the floor {rate / floor_rate:.2f}")
    finally:
        live.pause_connectors(settings, False)
    print(f"work directory                {work}")


def run_once(settings: Settings, expected: live.Expected, workers: int, work: Path, timeout: float,
             checkout: Path | None = None, processes: int = 1) -> tuple[float, float]:
    """Seconds from start to every output final, and the pipeline's CPU seconds by then."""
    live.reset_stores(settings, expected)
    final = live.Finality(settings, expected)
    try:
        start = time.perf_counter()
        with live.pipeline(workers, work, checkout, processes) as running:
            proc = running.proc
            said = start
            while not final.done():
                if time.perf_counter() - said > 30:
                    print(f"  not final after {time.perf_counter() - start:.0f} s: missing {final.missing}", flush=True)
                    said = time.perf_counter()
                if proc.poll() is not None:
                    raise SystemExit(f"erpsync run exited ({proc.returncode}); see the logs in {work}")
                if time.perf_counter() - start > timeout:
                    raise SystemExit(f"not final after {timeout:.0f} s: {final.missing} values missing; see {work}")
                time.sleep(0.5)
            seconds = time.perf_counter() - start
            cpu = live.cpu_seconds(proc.pid)
    finally:
        final.close()
    return seconds, cpu


if __name__ == "__main__":
    main()
