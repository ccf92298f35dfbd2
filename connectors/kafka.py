"""Kafka: raw change topics in; canonical/derived topics and the DLQ out.

Production is at-least-once: bytewax recovery resumes each partition from its snapshotted offset,
so records after the last snapshot are delivered again, and every consumer of our topics is
fenced by source position (or idempotent by key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from erpsync import telemetry
from erpsync.settings import Settings
from state.records import DLQ_REPLAY_TOPIC, DLQ_TOPIC, DeadLetter, Emit, Progress, RawRecord, event_ms_of

log = logging.getLogger(__name__)

Serializer = Callable[[str, str, dict[str, Any]], bytes]


class Lateness:
    """How late records reach the pipeline: the largest (now - record timestamp) of the last few seconds.

    A partition read to its end promises event time up to its ``Progress`` (minus the configured
    grace, ``flows.idle_grace_ms``). Records can take longer than that grace from their producer to
    here: when the machine is busy, when the pipeline works through a large batch before it reads
    again. Such a record would land behind its partition's promise (the reader then moves it just
    after it, ``ReaderState.time_of``, and live output stops matching a replay). So the promise also
    steps back by the lateness seen recently on every partition of this process: a busy pipeline
    promises less and waits a little longer; an idle one answers within the grace.
    """

    WINDOW_S = 10
    # A record older than this is backlog (a catch-up), not a slow delivery: counting it would hold
    # quiet partitions back by the backlog's age.
    CAP_MS = 5_000

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}  # second -> largest lateness seen in it

    def observe(self, now_ms: int, lateness_ms: int) -> None:
        lateness_ms = min(lateness_ms, self.CAP_MS)
        second = now_ms // 1000
        if lateness_ms > self.buckets.get(second, 0):
            self.buckets[second] = lateness_ms

    def current(self, now_ms: int) -> int:
        oldest = now_ms // 1000 - self.WINDOW_S
        for second in [s for s in self.buckets if s < oldest]:
            self.buckets.pop(second, None)
        return max(self.buckets.values(), default=0)


LATENESS = Lateness()  # shared by the partitions of one process: load slows them all


class _RawPartition(StatefulSourcePartition[RawRecord | Progress, int]):
    """One topic partition: its records in order, and ``Progress`` while it has nothing more to read."""

    def __init__(self, config: dict[str, Any], topic: str, partition: int, resume: int | None,
                 batch_size: int, quiet_ms: int) -> None:
        self.consumer = Consumer(config)
        self.offset = OFFSET_BEGINNING if resume is None else resume
        self.consumer.assign([TopicPartition(topic, partition, self.offset)])
        self.topic, self.partition = topic, partition
        self.channel = f"{topic}#{partition}"
        self.batch_size = batch_size
        self.quiet_ms = quiet_ms
        self.at_end = False
        self.told_ms = 0  # when Progress was last sent

    def next_batch(self) -> list[RawRecord | Progress]:
        out: list[RawRecord | Progress] = []
        now = int(time.time() * 1000)
        for msg in self.consumer.consume(self.batch_size, 0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.at_end = True
                else:
                    log.warning("reading %s: %s", self.channel, err.str(), extra={"topic": self.topic})
                continue
            self.at_end = False
            raw = _to_raw(msg, self.channel)
            if raw.timestamp_ms > 0:
                LATENESS.observe(now, now - raw.timestamp_ms)
            out.append(raw)
            self.offset = (msg.offset() or 0) + 1
        if self.at_end:
            if not out or now - self.told_ms >= self.quiet_ms:
                out.append(Progress(self.channel, now - LATENESS.current(now)))
                self.told_ms = now
        return out

    def next_awake(self) -> datetime | None:
        # Caught up: look again soon (the marks of a quiet partition keep event time moving).
        return datetime.now(UTC) + timedelta(milliseconds=self.quiet_ms) if self.at_end else None

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self.consumer.close()


class RawSource(FixedPartitionedSource[RawRecord | Progress, int]):
    """The raw topics, read from the beginning (or the recovered offsets), one bytewax partition each."""

    def __init__(self, settings: Settings, partitions: dict[str, list[int]], batch_size: int = 2000,
                 quiet_ms: int = 20) -> None:
        self.config = settings.kafka.client_config() | {
            "group.id": "erpsync-pipeline",  # offsets live in bytewax's recovery, not in the group
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
        self.partitions = partitions
        self.batch_size = batch_size
        self.quiet_ms = quiet_ms

    def list_parts(self) -> list[str]:
        return [f"{t}#{p}" for t, ps in sorted(self.partitions.items()) for p in ps]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RawPartition:
        topic, _, partition = for_part.rpartition("#")
        return _RawPartition(dict(self.config), topic, int(partition), resume_state, self.batch_size, self.quiet_ms)


def raw_input(flow: Dataflow, step_id: str, settings: Settings,
              partitions: dict[str, list[int]]) -> Stream[RawRecord | Progress]:
    """Read the partitions from the beginning (or the recovered offsets)."""
    return op.input(step_id, flow, RawSource(settings, partitions))


def _to_raw(msg: Any, channel: str) -> RawRecord:
    kind, ts = msg.timestamp()
    ts = ts if kind != TIMESTAMP_NOT_AVAILABLE else 0
    topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    telemetry.consumed(topic, partition, offset)
    if topic == DLQ_REPLAY_TOPIC:  # a dead letter re-injected: it stands for the original record
        try:
            h = {k: bytes(v or b"").decode() for k, v in msg.headers() or []}
            return RawRecord(h["topic"], int(h["partition"]), int(h["offset"]), msg.key(), msg.value(), ts,
                             replayed=True, channel=channel)
        except (KeyError, ValueError):  # (UnicodeDecodeError is a ValueError)
            pass  # not one of ours: processed as a record of the replay topic (no mapping -> DLQ)
    return RawRecord(topic, partition, offset, msg.key(), msg.value(), ts, channel=channel)


Message = KafkaSinkMessage[bytes | None, bytes | None]
# A message, or (message, source event ms, canonical event id or None) for the latency metric and traces.
Outgoing = Message | tuple[Message, int, str | None]


class TopicSink(DynamicSink[Outgoing]):
    """Produces to the topic named in each message; raises if any delivery fails.

    Unlike a fire-and-forget producer, a failed delivery stops the dataflow before the next
    snapshot, so the records are read again on restart instead of being lost.
    """

    def __init__(self, settings: Settings, extra: dict[str, Any] | None = None) -> None:
        self.config = settings.kafka.client_config() | {
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        } | (extra or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TopicSinkPartition:
        return _TopicSinkPartition(Producer(self.config))


class _TopicSinkPartition(StatelessSinkPartition[Outgoing]):
    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.failures: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def write_batch(self, items: list[Outgoing]) -> None:
        messages = [item[0] if isinstance(item, tuple) else item for item in items]
        for m in messages:
            while True:
                try:
                    self.producer.produce(m.topic or "", value=m.value, key=m.key,
                                          headers=list(m.headers), on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.1)  # local queue full: let deliveries drain
        self.producer.flush()
        if self.failures:
            failures, self.failures = self.failures, []
            raise KafkaException(f"{len(failures)} deliveries failed, first: {failures[0]}")
        written: dict[str, list[int]] = {}
        for item in items:
            if isinstance(item, tuple):
                written.setdefault(item[0].topic or "", []).append(item[1])
        for topic, times in written.items():
            telemetry.sink_latency("kafka", topic, times)
        if telemetry.tracing():
            for item in items:
                if isinstance(item, tuple) and item[2] is not None:
                    with telemetry.event_span("sink.kafka", item[2], topic=item[0].topic or ""):
                        pass

    def close(self) -> None:
        self.producer.flush()


def emit_output(step_id: str, up: Stream[Emit], settings: Settings, serialize: Serializer) -> None:
    """Avro-encode and publish records, keyed by their business key."""

    def to_message(e: Emit) -> Outgoing:
        message = KafkaSinkMessage(e.key.encode(), serialize(e.topic, e.schema, e.value), topic=e.topic)
        return message, event_ms_of(e), e.value.get("event_id")

    op.output(step_id, op.map(f"{step_id}_encode", up, to_message), TopicSink(settings))


def dlq_output(step_id: str, up: Stream[DeadLetter], settings: Settings) -> None:
    """The original bytes, key and coordinates, with the reason in headers (spec section 3)."""

    def to_message(d: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes | None]:
        headers = [
            ("reason", d.reason.encode()),
            ("step", d.step.encode()),
            ("topic", d.raw.topic.encode()),
            ("partition", str(d.raw.partition).encode()),
            ("offset", str(d.raw.offset).encode()),
            ("ts", str(d.raw.timestamp_ms).encode()),
        ]
        return KafkaSinkMessage(d.raw.key, d.raw.value, topic=DLQ_TOPIC, headers=headers)

    op.output(step_id, op.map(f"{step_id}_frame", up, to_message), TopicSink(settings))


def ensure_topics(settings: Settings, topics: Iterable[str], config: dict[str, str] | None = None) -> None:
    """Create the topics that do not exist yet (single node: replication factor 1 locally)."""
    admin = AdminClient(settings.kafka.client_config())
    existing = set(admin.list_topics(timeout=10).topics)
    new = [NewTopic(t, num_partitions=1, replication_factor=-1, config=config or {})
           for t in sorted(set(topics) - existing)]
    if not new:
        return
    for topic, future in admin.create_topics(new).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def topic_partitions(settings: Settings) -> dict[str, list[int]]:
    """Every topic of the cluster and its partitions (one metadata request)."""
    admin = AdminClient(settings.kafka.client_config())
    return {t: sorted(m.partitions) for t, m in admin.list_topics(timeout=10).topics.items()}
