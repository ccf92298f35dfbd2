"""Kafka: raw change topics in; canonical/derived topics and the DLQ out.

Production is at-least-once: bytewax recovery resumes each partition from its snapshotted offset,
so records after the last snapshot are delivered again, and every consumer of our topics is
fenced by source position (or idempotent by key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from erpsync import telemetry
from erpsync.settings import Settings
from state.records import DLQ_REPLAY_TOPIC, DLQ_TOPIC, DeadLetter, Emit, RawRecord, event_ms_of

log = logging.getLogger(__name__)

Serializer = Callable[[str, str, dict[str, Any]], bytes]


def raw_input(
    flow: Dataflow, step_id: str, settings: Settings, topics: list[str]
) -> tuple[Stream[RawRecord], Stream[DeadLetter]]:
    """Read topics from the beginning (or the recovered offsets); consumer errors become DLQ records."""
    out = kop.input(step_id, flow, brokers=[settings.kafka.bootstrap_servers], topics=topics, tail=True,
                    batch_size=2000, add_config=settings.kafka.client_config())
    oks = op.map(f"{step_id}_raw", out.oks, _to_raw)
    errs = op.map(f"{step_id}_errors", out.errs, _error_to_dead_letter)
    return oks, errs


def _to_raw(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> RawRecord:
    ts = msg.timestamp[1] if msg.timestamp and msg.timestamp[0] else 0  # type 0: not available
    telemetry.consumed(msg.topic or "", msg.partition or 0, msg.offset or 0)
    if msg.topic == DLQ_REPLAY_TOPIC:  # a dead letter re-injected: it stands for the original record
        try:
            h = {k: bytes(v or b"").decode() for k, v in msg.headers}
            return RawRecord(h["topic"], int(h["partition"]), int(h["offset"]), msg.key, msg.value,
                             int(h.get("ts") or ts), replayed=True)
        except (KeyError, ValueError):  # (UnicodeDecodeError is a ValueError)
            pass  # not one of ours: processed as a record of the replay topic (no mapping -> DLQ)
    return RawRecord(msg.topic or "", msg.partition or 0, msg.offset or 0, msg.key, msg.value, ts)


def _error_to_dead_letter(err: KafkaError[bytes | None, bytes | None]) -> DeadLetter:
    return DeadLetter(_to_raw(err.msg), f"kafka consumer error: {err.err}", "kafka-input")


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
