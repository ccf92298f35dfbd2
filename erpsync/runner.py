"""Run the pipeline: live against Kafka (``erpsync run``) or offline over a dump (``erpsync replay``)."""

from __future__ import annotations

import gc
import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from erpsync.connectors import kafka
from erpsync.connectors.files import DumpSource, ReplaySink
from erpsync.connectors.metrics import IgnoredCounter
from erpsync.flows.canonicalize import make_canonicalizer
from erpsync.flows.pipeline import Sinks, Sources, build_flow
from erpsync.records import DLQ_TOPIC, EXCEPTIONS_TOPIC, DeadLetter, RawRecord
from erpsync.schemas.registry import SchemaRegistry, make_value_serializer
from erpsync.settings import Settings
from erpsync.state.changes import HEARTBEAT_PREFIX

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Collect the youngest generation less often.

    The pipeline keeps large long-lived state and allocates a few short-lived dicts per event;
    default thresholds cost about 10% of throughput (bench/canonicalize.py at 1M events).
    """
    gc.set_threshold(100_000, 50, 100)
    gc.freeze()


def replay(registry: SchemaRegistry, source: Path, target: Path, *, workers: int = 1) -> Counter[str]:
    """Run the production dataflow over a kcat dump; returns how many records went where."""
    sink = ReplaySink(target, registry)
    streams: list[Stream[object]] = []

    def raw(flow: Dataflow) -> tuple[Stream[RawRecord], Stream[DeadLetter]]:
        items = op.input("replay_input", flow, DumpSource(source))
        readable = op.branch("replay_input_readable", items, lambda x: isinstance(x, RawRecord))
        return readable.trues, readable.falses  # type: ignore[return-value]

    def collect(step_id: str, stream: Stream[object]) -> None:
        streams.append(stream)

    flow = build_flow(registry, sources=Sources(raw), sinks=Sinks(collect, collect, collect))
    merged: Stream[object] = op.merge("replay_all", *streams)
    op.output("replay_output", op.key_on("replay_one_writer", merged, lambda _: "out"), sink)  # type: ignore[misc]
    tune_gc()
    cli_main(flow, workers_per_process=workers)
    return sink.counts


def run(settings: Settings, registry: SchemaRegistry) -> None:
    """The live pipeline, resuming from bytewax recovery snapshots; runs until interrupted."""
    canonicalizer = make_canonicalizer(registry)
    raw_topics = canonicalizer.mappings.topics + sorted(canonicalizer.mappings.ignored_topics)
    heartbeats = [f"{HEARTBEAT_PREFIX}.{system}" for system in
                  sorted({m.system for m in canonicalizer.mappings.by_topic.values()})]
    topics = raw_topics + heartbeats
    kafka.ensure_topics(settings, topics)
    kafka.ensure_topics(settings, [e.topic for e in registry.entities().values()])
    kafka.ensure_topics(settings, [DLQ_TOPIC, EXCEPTIONS_TOPIC])
    serialize = make_value_serializer(registry, settings.kafka.schema_registry_url)

    def raw(flow: Dataflow) -> tuple[Stream[RawRecord], Stream[DeadLetter]]:
        return kafka.raw_input(flow, "kafka_raw", settings, topics)

    sinks = Sinks(
        emits=lambda step_id, s: kafka.emit_output(step_id, s, settings, serialize),
        dead_letters=lambda step_id, s: kafka.dlq_output(step_id, s, settings),
        ignored=lambda step_id, s: op.output(step_id, s, IgnoredCounter()),
    )
    flow = build_flow(registry, sources=Sources(raw), sinks=sinks)
    recovery = settings.recovery_dir
    if not recovery.exists():
        recovery.mkdir(parents=True)
        init_db_dir(recovery, settings.flows.workers)
    log.info("running the pipeline on %s, %d worker(s), recovery in %s", settings.kafka.bootstrap_servers,
             settings.flows.workers, recovery)
    tune_gc()
    cli_main(
        flow,
        workers_per_process=settings.flows.workers,
        epoch_interval=timedelta(seconds=settings.flows.snapshot_interval_s),
        recovery_config=RecoveryConfig(recovery),
    )
