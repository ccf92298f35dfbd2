"""The whole pipeline in this process over ``bench.workload`` records: no files, no Kafka, a counting sink.

What the in-process benches share (``bench.availability``, ``bench.orders``). The production
dataflow (``flows.pipeline.build_flow``, every stage) reads the records from an iterator as the
live source would hand them over (RawRecords with their Kafka timestamps, each channel ended after
its last record, as a replay does), so the input costs no memory and no parsing of a dump; the
outputs are counted by topic, not encoded. It measures the dataflow itself.

The workload's timestamps never go back across topics, so after each batch every channel promises
event time up to the newest timestamp read, as the live source does for partitions read to their
end (``Progress`` with the clock): the stages release as they go, as they do live.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from bench.workload import Record
from erpsync.channels import load_channels
from erpsync.runner import tune_gc
from flows.canonicalize import make_canonicalizer
from flows.pipeline import Sinks, Sources, Topology, build_flow
from schemas.registry import SchemaRegistry
from state.order_status import Slas
from state.records import Emit, Progress, RawRecord

BATCH = 2000


class _Part(StatefulSourcePartition[RawRecord | Progress, int]):
    def __init__(self, records: Iterator[Record], channels: list[str]) -> None:
        self.records, self.channels = records, channels
        self.offsets: dict[str, int] = {}
        self.read = 0
        self.done = False

    def next_batch(self) -> list[RawRecord | Progress]:
        if self.done:
            raise StopIteration
        out: list[RawRecord | Progress] = []
        for r in self.records:
            channel = f"{r.topic}#0"
            offset = self.offsets[channel] = self.offsets.get(channel, -1) + 1
            out.append(RawRecord(r.topic, 0, offset, None if r.key is None else r.key.encode(),
                                 None if r.value is None else r.value.encode(), r.ts, channel=channel))
            if len(out) == BATCH:
                break
        self.read += len(out)
        if not out:
            self.done = True
            return [Progress(c, None) for c in self.channels]
        newest = out[-1].timestamp_ms  # type: ignore[union-attr]
        out.extend(Progress(c, newest) for c in self.channels)
        return out

    def snapshot(self) -> int:
        return self.read


class RecordSource(FixedPartitionedSource[RawRecord | Progress, int]):
    """Workload records as the raw input of one partition (no resume: a bench runs once)."""

    def __init__(self, records: Iterable[Record], channels: Iterable[str]) -> None:
        self.records = iter(records)
        self.channels = list(channels)

    def list_parts(self) -> list[str]:
        return ["records"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(self.records, self.channels)


class _Count(DynamicSink[Any]):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        counts = self.counts

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                for item in items:
                    counts[item.topic if isinstance(item, Emit) else type(item).__name__] += 1

        return Part()


def channels_of(topics: Iterable[str]) -> list[str]:
    return sorted(f"{t}#0" for t in topics)


def run(records: Iterable[Record], topics: Iterable[str], *, workers: int = 1) -> tuple[float, float, Counter[str]]:
    """(seconds, CPU seconds, output counts) of the pipeline over `records`; `topics`: every topic they use."""
    registry = SchemaRegistry.load()
    channels = channels_of(topics)
    counter = _Count()

    def sink(step_id: str, stream: Any) -> None:
        op.output(step_id, stream, counter)

    def nowhere(step_id: str, stream: Any) -> None:
        """The stores: their records are counted once, on the emits stream."""

    def source(flow: Dataflow) -> Any:
        return op.input("bench_in", flow, RecordSource(records, channels))

    flow = build_flow(registry, load_channels(), Topology(channels, workers=workers),
                      sources=Sources(source), sinks=Sinks(sink, sink, sink, nowhere, nowhere, nowhere, nowhere),
                      slas=Slas(), canonicalizer=make_canonicalizer(registry))
    tune_gc()
    start, cpu = time.perf_counter(), time.process_time()
    cli_main(flow, workers_per_process=workers)
    return time.perf_counter() - start, time.process_time() - cpu, counter.counts


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
