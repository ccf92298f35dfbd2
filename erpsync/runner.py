"""Run the pipeline: live against Kafka (``erpsync run``) or offline over a dump (``erpsync replay``)."""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.errors import BytewaxRuntimeError
from bytewax.outputs import DynamicSink
from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main
from confluent_kafka import KafkaException

from connectors import background, http_channels, kafka, lifecycle, ops_db
from connectors import redis as redis_store
from connectors.erp_intake import IntakeWriter
from connectors.files import DumpSource, RedisWrite, ReplaySink, dump_channel_ends
from connectors.kafka import Serializer
from connectors.kafka_out import (
    Outgoing,
    TopicLayout,
    dead_letter_records,
    emit_records,
    kafka_output,
    recovery_created_ms,
)
from connectors.metrics import IgnoredCounter
from connectors.ops_db import AvailabilitySink, ExceptionSink, OrderStatusSink
from connectors.redis import AtsSink
from connectors.resilience import HEALTH
from erpsync import telemetry
from erpsync.channels import OutputPlan, configured_channels, load_channels
from erpsync.cluster import Cluster, ensure_recovery
from erpsync.progress import counting_source
from erpsync.settings import Settings
from flows.canonicalize import make_canonicalizer
from flows.pipeline import COMMERCE_ORDERS_TOPIC, Sinks, Sources, Topology, build_flow, replay_sinks
from flows.sequencing import RESEED_SPREAD_S
from schemas.mapping import MAPPINGS_DIR
from schemas.mapping_check import refuse_invalid_mappings
from schemas.registry import SchemaRegistry, make_value_serializer
from state import EXCEPTION_SCHEMA
from state.availability import AVAILABILITY_SCHEMA
from state.changes import TRANSACTION_SUFFIX, Canonicalizer
from state.channels import Channel
from state.intake import ORDER_INTAKE_OUT_TOPIC
from state.order_status import ORDER_STATUS_SCHEMA
from state.records import (
    DLQ_REPLAY_TOPIC,
    DLQ_TOPIC,
    EXCEPTIONS_TOPIC,
    DeadLetter,
    Emit,
    Progress,
    RawRecord,
    Reseed,
)

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Collect the youngest generation less often.

    The pipeline keeps large long-lived state and allocates a few short-lived dicts per event;
    default thresholds cost about 10% of throughput (bench/canonicalize.py at 1M events).
    """
    gc.set_threshold(100_000, 50, 100)
    gc.freeze()


def topology(settings: Settings, channels: list[str], workers: int,
             reseed: frozenset[str] = frozenset()) -> Topology:
    """The dataflow's shape: every input channel, workers, and the event-time settings."""
    f = settings.flows
    return Topology(channels, workers=workers, shards=f.shards, grace_ms=f.idle_grace_ms,
                    business_zone=f.business_timezone, reseed=reseed)


def replay(settings: Settings, registry: SchemaRegistry, source: Path, target: Path, *,
           workers: int = 1, channels: Sequence[Channel] | None = None,
           on_input: Callable[[int], None] | None = None) -> Counter[str]:
    """Run the production dataflow over a kcat dump; returns how many records went where.

    Each channel's outputs apply as live: no topic records for kafka = false, JSON values for
    format = "json", the Redis writes (ats:<channel>) for redis = true. channels: default the
    packaged definitions. on_input(n) is called for every n input records read (progress).
    """
    channels = tuple(channels) if channels is not None else load_channels()
    plan = OutputPlan.of(channels)
    sink = ReplaySink(target, registry, plan)
    streams: list[Stream[object]] = []
    ends = dump_channel_ends(source)
    inputs = sorted(ends)

    def raw(flow: Dataflow) -> Stream[RawRecord | Progress | DeadLetter]:
        # Progress hook (erpsync.progress): counts the dump's records as the source reads them.
        dump = DumpSource(source, inputs, ends)
        return op.input("replay_input", flow, dump if on_input is None else counting_source(
            dump, on_input, lambda item: not isinstance(item, Progress)))

    def collect(step_id: str, stream: Stream[object]) -> None:
        streams.append(stream)

    def published(step_id: str, stream: Stream[Emit]) -> None:  # as live: nothing on a kafka = false topic
        kept: Stream[Emit] = op.filter(f"{step_id}_kafka_channels", stream, lambda e: e.topic not in plan.kafka_off)
        collect(step_id, kept)

    def redis_view(step_id: str, stream: Stream[Emit]) -> None:  # as live: HSET ats:<channel> for redis = true
        bound = op.filter(f"{step_id}_redis_channels", stream, lambda e: e.value["channel"] in plan.redis_channels)
        collect(step_id, op.map(f"{step_id}_redis_view", bound,
                                lambda e: RedisWrite(e.value["channel"], e.value["sku"], e.value["ats"])))

    sinks = dataclasses.replace(replay_sinks(collect), emits=published, availability=redis_view)
    canonicalizer = make_canonicalizer(registry, settings.flows.mappings_dir)
    cluster = Cluster(settings.flows.addresses, settings.flows.process_id, workers)
    flow = build_flow(registry, channels, topology(settings, inputs, cluster.total_workers), sources=Sources(raw),
                      sinks=sinks,
                      slas=settings.flows.slas(), canonicalizer=canonicalizer)
    merged: Stream[object] = op.merge("replay_all", *streams)
    op.output("replay_output", op.key_on("replay_one_writer", merged, lambda _: "out"), sink)  # type: ignore[misc]
    tune_gc()
    cli_main(flow, **cluster.cli_kwargs())
    return sink.counts  # (empty in the processes of a cluster that do not hold the output)


def channel_serializer(plan: OutputPlan, avro: Serializer) -> Serializer:
    """Avro by default; plain JSON (same fields) for channels whose storefront team reads JSON."""
    json_topics = plan.json_topics

    def serialize(topic: str, schema: str, value: dict[str, Any]) -> bytes:
        if topic in json_topics:
            return json.dumps(value, separators=(",", ":")).encode()
        return avro(topic, schema, value)

    return serialize


def run(settings: Settings, registry: SchemaRegistry) -> None:
    """The live pipeline, resuming from bytewax recovery snapshots; runs until SIGTERM or Ctrl-C.

    A stop ends the inputs; the dataflow drains and takes a final snapshot (``connectors.lifecycle``).
    When Redis or the ops database lost their data (their seed marker is gone), the dataflow is
    stopped and started again in this process, and the steps resumed from the snapshot re-publish
    their current values to that store (``Topology.reseed``): no history is read again, nothing
    is re-counted, and no Kafka record is written twice.
    """
    # Mappings check (schemas/mapping_check.py): refuse to start, with one line naming the file,
    # the key and the problem, on a mapping that would load but dead-letter or misread rows.
    refuse_invalid_mappings(registry, settings.flows.mappings_dir or MAPPINGS_DIR)
    lifecycle.reset()
    channels = configured_channels(settings)
    plan = OutputPlan.of(channels)
    canonicalizer = make_canonicalizer(registry, settings.flows.mappings_dir)
    mapped = canonicalizer.mappings.topics + sorted(canonicalizer.mappings.ignored_topics)
    # Debezium's transaction metadata of each source system (keeps source transactions whole)
    transactions = [f"{system}{TRANSACTION_SUFFIX}" for system in
                    sorted({m.system for m in canonicalizer.mappings.by_topic.values()})]
    outputs = [*(e.topic for e in registry.entities().values()), DLQ_TOPIC, EXCEPTIONS_TOPIC, ORDER_INTAKE_OUT_TOPIC]
    kafka.ensure_topics(settings, [*mapped, *outputs])
    kafka.ensure_topics(settings, [COMMERCE_ORDERS_TOPIC, DLQ_REPLAY_TOPIC], kafka.APPEND_TIME)
    kafka.ensure_topics(settings, transactions, partitions=1)  # a transaction's BEGIN and END differ in key
    channel_topics = [*(c.topic for c in channels), *(c.order_status_topic for c in channels)]
    kafka.ensure_topics(settings, channel_topics, {"cleanup.policy": "compact"})
    # Every captured table of a mapped source, mapped or not: a table captured without a mapping
    # shows up as dead letters ("no mapping for source table ..."), replayable once it has one.
    existing = kafka.topic_partitions(settings)
    prefixes = tuple({t.rsplit(".", 1)[0] + "." for t in canonicalizer.mappings.topics})  # "erp.erp.", "wms.wms."
    topics = sorted({*mapped, *transactions, COMMERCE_ORDERS_TOPIC, DLQ_REPLAY_TOPIC,
                     *(t for t in existing if t.startswith(prefixes))})
    ops_db.migrate(settings)
    telemetry.setup(settings)
    serialize = channel_serializer(plan, make_value_serializer(registry, settings.kafka.schema_registry_url))
    layout = TopicLayout(settings).load([*outputs, *channel_topics])
    unlisted = [t for t in topics if t not in existing]  # created above: listed (kafka.ensure_topics waits)
    if unlisted:
        raise KafkaException(f"input topics missing from the cluster's metadata: {', '.join(unlisted[:5])}")
    partitions = {t: existing[t] for t in topics}
    input_channels = [f"{t}#{p}" for t, ps in sorted(partitions.items()) for p in ps]

    cluster = Cluster.of(settings)
    recovery = settings.recovery_dir
    fresh = ensure_recovery(recovery, cluster)  # this process's share of the snapshots (erpsync.cluster)
    token = f"{recovery.resolve()}@{recovery_created_ms(recovery)}"
    HEALTH.configure(settings, recovery / f"health-{cluster.process_id}.json")
    reseed = frozenset() if fresh else stores_to_reseed(settings, token, cluster.process_id)
    if fresh:  # reading history from the start fills both
        mark_seeded(settings, token, SEED_STORES, cluster.process_id)
    log.info("running the pipeline on %s: process %d of %d, %d worker(s) each, recovery in %s",
             settings.kafka.bootstrap_servers, cluster.process_id, cluster.processes, cluster.workers_per_process,
             recovery)
    # HTTP push channels (connectors.http_channels): availability and order status records are handed
    # to the delivery engine, which never blocks the dataflow (one engine for every run of the dataflow).
    push_sink = http_channels.PushSink(settings, channels, serialize)
    tune_gc()
    with lifecycle.stop_on_signals(), Watchdog(settings, token, cluster) as watchdog:
        while True:
            if reseed:
                log.warning("re-seeding %s from the pipeline's state", " and ".join(sorted(reseed)))
                if "ops-db" in reseed:
                    ops_db.migrate(settings)
            watchdog.reseeding(reseed)
            flow = _live_flow(settings, registry, channels, canonicalizer, input_channels, partitions, layout,
                              serialize, push_sink, reseed)
            _execute(settings, flow, recovery, cluster)
            reseed = lifecycle.take_reseed()
            if not reseed:
                break
    log.info("pipeline stopped; it resumes from the last snapshot in %s", recovery)


def _live_flow(settings: Settings, registry: SchemaRegistry, channels: Sequence[Channel], canonicalizer: Canonicalizer,
               input_channels: list[str], partitions: dict[str, list[int]], layout: TopicLayout,
               serialize: Serializer, push_sink: http_channels.PushSink, reseed: frozenset[str]) -> Dataflow:
    plan = OutputPlan.of(channels)
    kafka_off, to_redis = plan.kafka_off, plan.redis_channels
    to_kafka: list[Stream[Outgoing]] = []

    def raw(flow: Dataflow) -> Stream[RawRecord | Progress | DeadLetter]:
        return kafka.raw_input(flow, "kafka_raw", settings, partitions)

    def for_redis(e: Emit) -> bool:
        return e.schema == AVAILABILITY_SCHEMA and e.value["channel"] in to_redis

    def store(step_id: str, stream: Stream[Emit], sink: DynamicSink[Emit]) -> None:
        # the stores' round trips on writer threads, written by each epoch's end (connectors.background)
        background.output(step_id, stream, sink, settings.flows.output_parts)

    def push(step_id: str, stream: Stream[Emit], kind: http_channels.Kind) -> None:
        if http_channels.pushes(channels, kind):
            op.output(f"{step_id}_push", stream, push_sink)

    def stores(step_id: str, stream: Stream[Emit]) -> None:
        store(f"{step_id}_redis", op.filter(f"{step_id}_redis_channels", stream, for_redis), AtsSink(settings))
        store(f"{step_id}_ops_db", stream, AvailabilitySink(settings))
        push(step_id, stream, "availability")

    def order_status(step_id: str, stream: Stream[Emit]) -> None:
        store(step_id, stream, OrderStatusSink(settings))
        push(step_id, stream, "order_status")

    def emits(step_id: str, stream: Stream[Emit]) -> None:
        kept = op.filter(f"{step_id}_kafka_channels", stream, lambda e: e.topic not in kafka_off)
        to_kafka.append(op.map(f"{step_id}_encode", kept, emit_records(layout, serialize)))

    def dead_letters(step_id: str, stream: Stream[DeadLetter]) -> None:
        to_kafka.append(op.map(f"{step_id}_frame", stream, dead_letter_records(layout)))

    def reseeds(step_id: str, stream: Stream[Reseed]) -> None:
        to_redis_store = op.filter(f"{step_id}_redis_only", stream, lambda r: "redis" in r.stores and for_redis(r.emit))
        store(f"{step_id}_redis", op.map(f"{step_id}_redis_emit", to_redis_store, lambda r: r.emit),
              AtsSink(settings))
        to_ops = op.map(f"{step_id}_ops_emit", op.filter(f"{step_id}_ops_only", stream, lambda r: "ops-db" in r.stores),
                        lambda r: r.emit)
        for schema, sink in ((AVAILABILITY_SCHEMA, AvailabilitySink), (ORDER_STATUS_SCHEMA, OrderStatusSink),
                             (EXCEPTION_SCHEMA, ExceptionSink)):
            name = schema.rsplit(".", 1)[-1].lower()
            only = op.filter(f"{step_id}_ops_{name}_only", to_ops, functools.partial(_has_schema, schema))
            store(f"{step_id}_ops_{name}", only, sink(settings))

    sinks = Sinks(
        emits=emits,
        dead_letters=dead_letters,
        ignored=lambda step_id, s: op.output(step_id, s, IgnoredCounter()),
        availability=stores,
        order_intake=lambda step_id, s: store(step_id, s, IntakeWriter(settings)),
        order_status=order_status,
        exceptions=lambda step_id, s: store(step_id, s, ExceptionSink(settings)),
        reseed=reseeds,
    )
    flow = build_flow(registry, channels, topology(settings, input_channels, Cluster.of(settings).total_workers,
                                                   reseed),
                      sources=Sources(raw), sinks=sinks, slas=settings.flows.slas(), canonicalizer=canonicalizer)
    kafka_output("out_kafka", op.merge("out_kafka_all", *to_kafka), settings, layout)
    return flow


def _has_schema(schema: str, e: Emit) -> bool:
    return e.schema == schema


def _execute(settings: Settings, flow: Dataflow, recovery: Path, cluster: Cluster) -> None:
    """Run the dataflow until its inputs end (a stop) or it fails (a second Ctrl-C is a stop)."""
    try:
        cli_main(
            flow,
            **cluster.cli_kwargs(),
            epoch_interval=timedelta(seconds=settings.flows.snapshot_interval_s),
            recovery_config=RecoveryConfig(recovery),
        )
    except (KeyboardInterrupt, BytewaxRuntimeError) as exc:
        if any(isinstance(c, KeyboardInterrupt) for c in _causes(exc)):
            log.info("interrupted: no final snapshot; the next start resumes from the one before")
            return
        raise


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


# ----------------------------------------------------------------------------- self-healing stores

SEED_STORES = frozenset({"redis", "ops-db"})


def mark_seeded(settings: Settings, token: str, stores: frozenset[str], process_id: int) -> None:
    if "redis" in stores:
        redis_store.mark_seeded(settings, token, process_id)
    if "ops-db" in stores:
        ops_db.mark_seeded(settings, token, process_id)


def stores_to_reseed(settings: Settings, token: str, process_id: int) -> frozenset[str]:
    """The stores whose marker for this process is not its token (they lost its outputs); unreachable ones are not.

    Each process of a cluster has its own marker, so a store that lost its data is re-seeded by every
    process (each re-publishes the keys it holds), and the processes' recovery stores (one volume
    each, with its own token) never take each other's marker for a loss.
    """
    lost = set()
    for store, seeded in (("redis", redis_store.seeded), ("ops-db", ops_db.seeded)):
        try:
            if seeded(settings, process_id) != token:
                lost.add(store)
        except Exception as exc:  # noqa: BLE001 - down: its sink waits for it, and the watchdog looks again
            log.debug("seed marker of %s not readable: %s", store, exc)
    return frozenset(lost)


class Watchdog:
    """Looks at the stores' seed markers every few seconds while the pipeline runs; marks re-seeded stores.

    A store whose marker is gone lost its data: the pipeline restarts its dataflow to re-seed it. A
    store being re-seeded gets its marker back once every step has re-published (``RESEED_SPREAD_S``)
    and two snapshots have passed; if the process dies before, the next start re-seeds it again.
    """

    INTERVAL_S = 5.0

    def __init__(self, settings: Settings, token: str, cluster: Cluster) -> None:
        self.settings, self.token, self.cluster = settings, token, cluster
        self.process_id = cluster.process_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="seed-watchdog", daemon=True)
        self.pending: frozenset[str] = frozenset()
        self.since = time.monotonic()

    def __enter__(self) -> Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def reseeding(self, stores: frozenset[str]) -> None:
        self.pending, self.since = stores, time.monotonic()

    def _loop(self) -> None:
        settle_s = RESEED_SPREAD_S + 2 * self.settings.flows.snapshot_interval_s + 5
        while not self.stop.wait(self.INTERVAL_S):
            if self.pending and time.monotonic() - self.since > settle_s:
                try:
                    mark_seeded(self.settings, self.token, self.pending, self.process_id)
                    log.info("re-seeded %s", " and ".join(sorted(self.pending)))
                    self.pending = frozenset()
                except Exception as exc:  # noqa: BLE001 - a store down again: try on the next round
                    log.debug("marking %s seeded failed: %s", sorted(self.pending), exc)
                continue
            lost = stores_to_reseed(self.settings, self.token, self.process_id) - self.pending
            for store in sorted(lost):
                lifecycle.request_reseed(store, "its seed marker is gone (it lost its data)")
            if lost and self.cluster.processes > 1:
                # A cluster's dataflow ends only when every process ends its inputs: rather than
                # wait for the others, exit; the supervisors start the cluster again, and every
                # process whose marker is gone re-seeds from its snapshot at start.
                lifecycle.abandon(f"{' and '.join(sorted(lost))} lost the outputs of process {self.process_id}")
