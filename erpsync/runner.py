"""Run the pipeline: live against Kafka (``erpsync run``) or offline over a dump (``erpsync replay``)."""

from __future__ import annotations

import gc
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from connectors import http_channels, kafka, ops_db
from connectors.erp_intake import IntakeWriter
from connectors.files import DumpSource, ReplaySink
from connectors.kafka import Serializer
from connectors.metrics import IgnoredCounter
from connectors.ops_db import AvailabilitySink, ExceptionSink, OrderStatusSink
from connectors.redis import AtsSink
from erpsync import telemetry
from erpsync.channels import load_channels
from erpsync.settings import Settings
from flows.canonicalize import make_canonicalizer
from flows.orders import COMMERCE_ORDERS_TOPIC, VALIDATION_TOPICS
from flows.pipeline import Sinks, Sources, build_flow, replay_sinks
from schemas.registry import SchemaRegistry, make_value_serializer
from state.changes import HEARTBEAT_PREFIX
from state.channels import Channel
from state.intake import ORDER_INTAKE_OUT_TOPIC
from state.records import DLQ_REPLAY_TOPIC, DLQ_TOPIC, EXCEPTIONS_TOPIC, DeadLetter, Emit, RawRecord
from state.sla import Slas

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Collect the youngest generation less often.

    The pipeline keeps large long-lived state and allocates a few short-lived dicts per event;
    default thresholds cost about 10% of throughput (bench/canonicalize.py at 1M events).
    """
    gc.set_threshold(100_000, 50, 100)
    gc.freeze()


def replay(registry: SchemaRegistry, source: Path, target: Path, *, workers: int = 1,
           slas: Slas | None = None, mappings_dir: Path | None = None) -> Counter[str]:
    """Run the production dataflow over a kcat dump; returns how many records went where."""
    sink = ReplaySink(target, registry)
    streams: list[Stream[object]] = []

    def raw(flow: Dataflow) -> tuple[Stream[RawRecord], Stream[DeadLetter]]:
        items = op.input("replay_input", flow, DumpSource(source))
        readable = op.branch("replay_input_readable", items, lambda x: isinstance(x, RawRecord))
        return readable.trues, readable.falses  # type: ignore[return-value]

    def collect(step_id: str, stream: Stream[object]) -> None:
        streams.append(stream)

    flow = build_flow(registry, load_channels(), sources=Sources(raw), sinks=replay_sinks(collect),
                      slas=slas, live=False, canonicalizer=make_canonicalizer(registry, mappings_dir))
    merged: Stream[object] = op.merge("replay_all", *streams)
    op.output("replay_output", op.key_on("replay_one_writer", merged, lambda _: "out"), sink)  # type: ignore[misc]
    tune_gc()
    cli_main(flow, workers_per_process=workers)
    return sink.counts


def channel_serializer(channels: Sequence[Channel], avro: Serializer) -> Serializer:
    """Avro by default; plain JSON (same fields) for channels whose storefront team reads JSON."""
    json_topics = {t for c in channels if c.outputs.format == "json" for t in (c.topic, c.order_status_topic)}

    def serialize(topic: str, schema: str, value: dict[str, Any]) -> bytes:
        if topic in json_topics:
            return json.dumps(value, separators=(",", ":")).encode()
        return avro(topic, schema, value)

    return serialize


def run(settings: Settings, registry: SchemaRegistry) -> None:
    """The live pipeline, resuming from bytewax recovery snapshots; runs until interrupted."""
    channels = load_channels(settings.flows.channels_dir)
    canonicalizer = make_canonicalizer(registry, settings.flows.mappings_dir)
    mapped = canonicalizer.mappings.topics + sorted(canonicalizer.mappings.ignored_topics)
    heartbeats = [f"{HEARTBEAT_PREFIX}.{system}" for system in
                  sorted({m.system for m in canonicalizer.mappings.by_topic.values()})]
    kafka.ensure_topics(settings, [*mapped, *heartbeats, COMMERCE_ORDERS_TOPIC, DLQ_REPLAY_TOPIC,
                                   *(e.topic for e in registry.entities().values()), DLQ_TOPIC, EXCEPTIONS_TOPIC,
                                   ORDER_INTAKE_OUT_TOPIC])
    kafka.ensure_topics(settings, [*(c.topic for c in channels), *(c.order_status_topic for c in channels)],
                        {"cleanup.policy": "compact"})
    # Every captured table of a mapped source, mapped or not: a table captured without a mapping
    # shows up as dead letters ("no mapping for source table ..."), replayable once it has one.
    existing = kafka.topic_partitions(settings)
    prefixes = tuple({t.rsplit(".", 1)[0] + "." for t in canonicalizer.mappings.topics})  # "erp.erp.", "wms.wms."
    topics = sorted({*mapped, *heartbeats, COMMERCE_ORDERS_TOPIC, DLQ_REPLAY_TOPIC,
                     *(t for t in existing if t.startswith(prefixes))})
    ops_db.migrate(settings)
    telemetry.setup(settings)
    serialize = channel_serializer(channels, make_value_serializer(registry, settings.kafka.schema_registry_url))
    kafka_off = {t for c in channels if not c.outputs.kafka for t in (c.topic, c.order_status_topic)}
    to_redis = {c.id for c in channels if c.outputs.redis}

    def raw(flow: Dataflow) -> tuple[Stream[RawRecord], Stream[DeadLetter]]:
        return kafka.raw_input(flow, "kafka_raw", settings, topics)

    # HTTP push channels (connectors.http_channels): availability and order status records are handed
    # to the delivery engine, which never blocks the dataflow.
    push_sink = http_channels.PushSink(settings, channels, serialize)

    def push(step_id: str, stream: Stream[Emit], kind: http_channels.Kind) -> None:
        if http_channels.pushes(channels, kind):
            op.output(f"{step_id}_push", stream, push_sink)

    def stores(step_id: str, stream: Stream[Emit]) -> None:
        redis_bound = op.filter(f"{step_id}_redis_channels", stream, lambda e: e.value["channel"] in to_redis)
        op.output(f"{step_id}_redis", redis_bound, AtsSink(settings))
        op.output(f"{step_id}_ops_db", stream, AvailabilitySink(settings))
        push(step_id, stream, "availability")

    def order_status(step_id: str, stream: Stream[Emit]) -> None:
        op.output(step_id, stream, OrderStatusSink(settings))
        push(step_id, stream, "order_status")

    sinks = Sinks(
        emits=lambda step_id, s: kafka.emit_output(
            step_id, op.filter(f"{step_id}_kafka_channels", s, lambda e: e.topic not in kafka_off), settings,
            serialize),
        dead_letters=lambda step_id, s: kafka.dlq_output(step_id, s, settings),
        ignored=lambda step_id, s: op.output(step_id, s, IgnoredCounter()),
        availability=stores,
        order_intake=lambda step_id, s: op.output(step_id, s, IntakeWriter(settings)),
        order_status=order_status,
        exceptions=lambda step_id, s: op.output(step_id, s, ExceptionSink(settings)),
    )
    # The tables intake validation reads: at a fresh start, intake waits for each (flows.orders).
    validation = [topic for topic, m in canonicalizer.mappings.by_topic.items()
                  if canonicalizer.entities[m.entity].topic in VALIDATION_TOPICS]
    streams = [f"{t}#{p}" for t in sorted(validation) for p in existing.get(t, [])]
    flow = build_flow(registry, channels, sources=Sources(raw), sinks=sinks, slas=settings.flows.slas(),
                      canonicalizer=canonicalizer, streams=streams)
    recovery = settings.recovery_dir
    if not recovery.exists():
        recovery.mkdir(parents=True)
        init_db_dir(recovery, settings.flows.workers)
    log.info("running the pipeline on %s, %d worker(s), recovery in %s", settings.kafka.bootstrap_servers,
             settings.flows.workers, recovery)
    tune_gc()
    try:
        cli_main(
            flow,
            workers_per_process=settings.flows.workers,
            epoch_interval=timedelta(seconds=settings.flows.snapshot_interval_s),
            recovery_config=RecoveryConfig(recovery),
        )
    except (KeyboardInterrupt, BytewaxRuntimeError) as exc:
        if not isinstance(exc, KeyboardInterrupt) and not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        # Interrupted: the next start resumes from the last snapshot (sinks are fenced).
        log.info("pipeline stopped; it resumes from the last snapshot in %s", recovery)
