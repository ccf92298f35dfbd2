"""Canonicalize throughput per worker over a kcat dump, against a read+JSON-parse floor.

Usage: python -m bench.canonicalize [--events 1000000] [--workers 1]
Prints events/s of (a) the floor: read each line and json-parse it and its payload, nothing else;
(b) the read step of the pipeline (bytewax, production code: Debezium envelopes to canonical events,
channel orders passed through, counting sink); and their ratio. Both are
measured in the same run on the same file, so the ratio holds when the machine's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from bench.make_dump import generate
from connectors.files import DumpSource, dump_channel_ends
from erpsync.runner import tune_gc
from flows.canonicalize import make_canonicalizer, read
from flows.pipeline import Topology
from schemas.registry import SchemaRegistry
from state.changes import PartitionReader
from state.sequencer import Mark, read_groups


class _Count(DynamicSink[object]):
    def __init__(self) -> None:
        self.n = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[object]:
        sink = self

        class Part(StatelessSinkPartition[object]):
            def write_batch(self, items: list[object]) -> None:
                sink.n += len(items)

        return Part()


def floor(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["payload"] is not None:
                json.loads(rec["payload"])
    return time.perf_counter() - start


def flow_time(path: Path, workers: int) -> tuple[float, int]:
    counter = _Count()
    flow = Dataflow("bench_canonicalize")
    ends = dump_channel_ends(path)
    items = op.input("inp", flow, DumpSource(path, sorted(ends), ends))
    reader = PartitionReader(make_canonicalizer(SchemaRegistry.load()), 100, lambda raw, time: [raw],
                             frozenset({"commerce.orders"}))
    shards = Topology(sorted(ends)).shards  # read groups as the pipeline makes them
    # (a dump line that is not a record would be a DeadLetter)
    out = read(items, reader, read_groups(ends, shards), shards)  # type: ignore[arg-type]
    op.output("count", op.filter("outcomes", out, lambda o: not isinstance(o, Mark)), counter)
    tune_gc()  # as erpsync run and replay do
    start = time.perf_counter()
    cli_main(flow, workers_per_process=workers)
    return time.perf_counter() - start, counter.n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dump", type=Path, default=Path("/tmp/erpsync-bench.jsonl"))
    args = parser.parse_args()
    if not args.dump.exists() or sum(1 for _ in args.dump.open()) != args.events:
        generate(args.events, args.dump)
    t_floor = floor(args.dump)
    t_flow, n = flow_time(args.dump, args.workers)
    assert n == args.events, f"{n} outcomes for {args.events} events"
    rate_floor, rate_flow = args.events / t_floor, args.events / t_flow
    print(f"events                      {args.events}")
    print(f"floor (read + JSON parse)   {rate_floor:,.0f} events/s")
    print(f"canonicalize, {args.workers} worker(s)    {rate_flow:,.0f} events/s  "
          f"({rate_flow / args.workers:,.0f} per worker)")
    print(f"ratio canonicalize/floor    {rate_flow / rate_floor:.2f}")


if __name__ == "__main__":
    main()
