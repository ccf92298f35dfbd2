"""Kafka outputs, exactly once: Kafka transactions aligned with bytewax epochs, deduplicated on resume.

Every record the live pipeline writes to Kafka (canonical events, channel topics, order intake,
exceptions, dead letters) goes through one ``ExactlyOnceSink``. Consumers that read with
``isolation.level=read_committed`` (librdkafka's default: the CLI, the demo, the tests, and any
confluent-kafka/kcat consumer; Java consumers must set it) see each record once.

How:

- **Exclusive writers.** The sink has a fixed number of parts (``flows.output_parts``). Each Kafka
  partition of an output topic belongs to exactly one part (``part_of``), and each record is sent
  to the part owning its partition (the partition is chosen here, from the record key: stable
  across runs). A part is one transactional producer, ``transactional.id = erpsync-out-<part>``.
- **One transaction per epoch.** A part begins a transaction at its first record of an epoch and
  commits it in ``snapshot()``, which bytewax calls at the end of every epoch in which the part
  wrote. The part's state is, per owned partition, the offset after its last committed record.
- **Resume.** bytewax resumes from the last epoch whose snapshot is durable, so the epochs after
  it run again, and their outputs come again. The transactions of those epochs may have been
  committed before the crash (commit happens before the snapshot is durable). So a resumed part
  first calls ``init_transactions`` (which fences any zombie producer with the same id and aborts
  its open transaction), then reads its partitions from the snapshot's offsets to their ends with
  ``read_committed``: those records were committed after the snapshot. As the resumed run
  produces its outputs again, each one found there is dropped once (a multiset: identical records
  are counted, not collapsed). This is correct because the outputs depend only on the sources'
  histories (spec 5a): the resumed run produces the same records, whatever their batching; and
  because a part is the only writer of its partitions, everything after its offsets is its own.
  A partition a part has no offset for (new topic, or never snapshotted) is read from the time the
  recovery store was created (``recovery_created_ms``). Memory: at most what was committed after the
  last durable snapshot.

Records larger than the topic's ``max.message.bytes`` never reach the producer: they become dead
letters naming the size and the limit (``outgoing``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connectors import lifecycle
from connectors.kafka import Serializer
from connectors.resilience import Rejects, guarded, one_line
from erpsync import telemetry
from erpsync.settings import Settings
from state.records import DLQ_TOPIC, DeadLetter, Emit, event_ms_of

log = logging.getLogger(__name__)

SINK = "kafka"
RECORD_OVERHEAD = 1024  # record and batch headers, conservatively
# What a broker or the client refuses for the record itself: it goes to the DLQ, the rest goes on.
REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
                     KafkaError.INVALID_RECORD})
PRODUCER_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record for Kafka, its partition chosen; `event_ms`: its source commit time (latency)."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    event_ms: int = 0


def fingerprint(topic: str, partition: int, key: bytes | None, value: bytes | None) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (topic.encode(), str(partition).encode(), key or b"\x00", value or b"\x00"):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def part_of(topic: str, partition: int, parts: int) -> int:
    """The part that alone writes this topic partition."""
    return zlib.crc32(f"{topic}|{partition}".encode()) % parts


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of a record key: a function of the key only, so a key's records stay in order."""
    return zlib.crc32(key or b"") % partitions


@dataclass
class TopicLayout:
    """Partition counts and size limits of the output topics (read once, refreshed for unknown topics)."""

    settings: Settings
    partitions: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)

    def load(self, topics: Iterable[str]) -> TopicLayout:
        admin = AdminClient(self.settings.kafka.client_config())
        wanted = sorted(set(topics) - set(self.partitions))
        if not wanted:
            return self
        meta = admin.list_topics(timeout=30).topics
        for t in wanted:
            self.partitions[t] = len(meta[t].partitions) if t in meta and meta[t].partitions else 1
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in wanted if t in meta]
        for resource, future in admin.describe_configs(resources).items():
            try:
                entry = future.result().get("max.message.bytes")
                self.limits[resource.name] = int(entry.value) if entry is not None else PRODUCER_MAX_BYTES
            except KafkaException as exc:
                log.warning("max.message.bytes of %s unknown (%s); assuming %d", resource.name, exc,
                            PRODUCER_MAX_BYTES)
        return self

    def forget(self, topics: Iterable[str]) -> None:
        """Read these topics' layout again on next use (a limit changed)."""
        for t in topics:
            self.partitions.pop(t, None)
            self.limits.pop(t, None)

    def partitions_of(self, topic: str) -> int:
        if topic not in self.partitions:
            self.load([topic])
        return self.partitions[topic]

    def limit(self, topic: str) -> int:
        if topic not in self.partitions:
            self.load([topic])
        return min(self.limits.get(topic, PRODUCER_MAX_BYTES), PRODUCER_MAX_BYTES) - RECORD_OVERHEAD


def record_size(o: Outgoing) -> int:
    return len(o.key or b"") + len(o.value or b"") + sum(len(k) + len(v) for k, v in o.headers)


def outgoing(layout: TopicLayout, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]], event_ms: int) -> Outgoing:
    """The record on its partition, or a dead letter naming its size if the topic cannot take it."""
    size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
    limit = layout.limit(topic)
    if size > limit:
        reason = f"record of {size} bytes exceeds {topic}'s limit ({limit + RECORD_OVERHEAD} bytes max.message.bytes)"
        log.warning("%s (key %r); sent to %s without its value", reason, (key or b"")[:80], DLQ_TOPIC)
        telemetry.count(f"kafka:{topic}", "dlq")
        headers = [("reason", reason.encode()), ("step", b"sink:kafka"), ("topic", topic.encode()),
                   *((k, v) for k, v in headers if len(v) < 4096)]
        topic, value = DLQ_TOPIC, None
    return Outgoing(topic, partition_for(key, layout.partitions_of(topic)), key, value, tuple(headers), event_ms)


def emit_records(layout: TopicLayout, serialize: Serializer) -> Callable[[Emit], Outgoing]:
    """Avro-encode (or JSON for JSON channels) an output record; its event id in a header."""

    def to_outgoing(e: Emit) -> Outgoing:
        key = e.key.encode()
        headers: list[tuple[str, bytes]] = []
        if isinstance(e.value.get("event_id"), str):
            headers.append(("event_id", e.value["event_id"].encode()))
        try:
            value = serialize(e.topic, e.schema, e.value)
        except Exception as exc:  # noqa: BLE001 - one record that does not fit its schema must not stop the rest
            reason = f"could not encode for {e.topic}: {one_line(exc)}"
            log.warning("%s (key %r); sent to %s as JSON", reason, e.key)
            headers += [("reason", reason.encode()), ("step", b"sink:kafka"), ("topic", e.topic.encode())]
            fallback = json.dumps(e.value, default=str, sort_keys=True).encode()
            return outgoing(layout, DLQ_TOPIC, key, fallback, headers, event_ms_of(e))
        return outgoing(layout, e.topic, key, value, headers, event_ms_of(e))

    return to_outgoing


def dead_letter_records(layout: TopicLayout) -> Callable[[DeadLetter], Outgoing]:
    """The original bytes, key and coordinates, with the reason in headers (spec section 3)."""

    def to_outgoing(d: DeadLetter) -> Outgoing:
        headers = [
            ("reason", d.reason.encode()),
            ("step", d.step.encode()),
            ("topic", d.raw.topic.encode()),
            ("partition", str(d.raw.partition).encode()),
            ("offset", str(d.raw.offset).encode()),
            ("ts", str(d.raw.timestamp_ms).encode()),
        ]
        return outgoing(layout, DLQ_TOPIC, d.raw.key, d.raw.value, headers, d.raw.timestamp_ms)

    return to_outgoing


def kafka_output(step_id: str, records: Stream[Outgoing], settings: Settings, layout: TopicLayout) -> None:
    """Every Kafka record of the pipeline, to the part owning its partition, exactly once."""
    parts = settings.flows.output_parts
    keyed = op.map(f"{step_id}_to_part", records, lambda o: (str(part_of(o.topic, o.partition, parts)), o))
    op.output(step_id, keyed, ExactlyOnceSink(settings, layout, parts))


def recovery_created_ms(recovery_dir: Path) -> int:
    """When this recovery store was created (written beside it by the runner); 0 if unknown."""
    try:
        return int((recovery_dir / "created_ms").read_text())
    except (OSError, ValueError):
        return 0


# Offsets per owned partition: "topic|partition" -> the offset after the part's last committed record.
PartState = dict[str, int]


class ExactlyOnceSink(FixedPartitionedSink[Outgoing, PartState]):
    def __init__(self, settings: Settings, layout: TopicLayout, parts: int) -> None:
        self.settings, self.layout, self.parts = settings, layout, parts

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: PartState | None) -> _TransactionalPart:
        return _TransactionalPart(self, int(for_part), resume_state)


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def _retriable(exc: BaseException) -> bool:
    err = _kafka_error(exc) if isinstance(exc, KafkaException) else None
    return err is not None and (err.retriable() or err.code() in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                                                                   KafkaError._ALL_BROKERS_DOWN))


class _TransactionalPart(StatefulSinkPartition[Outgoing, PartState]):
    def __init__(self, sink: ExactlyOnceSink, part: int, resume: PartState | None) -> None:
        self.sink, self.part = sink, part
        settings = sink.settings
        self.producer = Producer(settings.kafka.client_config() | {
            "transactional.id": f"erpsync-out-{part}",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            # a Kafka outage of minutes is waited out inside one transaction
            "transaction.timeout.ms": 600_000,
            "message.timeout.ms": 600_000,
            "queue.buffering.max.kbytes": 65_536,  # bounded: a full queue blocks the worker (backpressure)
        })
        self._call(lambda: self.producer.init_transactions(30), "init_transactions")
        self.offsets: PartState = dict(resume or {})
        self.skip: Counter[bytes] = self._committed_after_snapshot()
        self.in_tx = False
        self.pending: list[Outgoing] = []  # this transaction's records, to produce again if it must abort
        self.failed: list[str] = []
        self.refused: list[tuple[Outgoing, KafkaError]] = []
        # the transaction failed while records were still being produced (a record the broker refused
        # puts it in an abortable state, and every produce() after raises): the rest of the epoch's
        # records only join `pending`; the commit aborts and writes them again
        self.doomed = False
        self.refusals: Counter[int] = Counter()  # times each record of the transaction was refused
        if self.skip:
            log.info("kafka output part %d: %d record(s) committed after the last snapshot will not be written again",
                     part, sum(self.skip.values()))

    # -- resume: what was committed after the snapshot
    def _owned(self) -> list[tuple[str, int]]:
        layout, parts = self.sink.layout, self.sink.parts
        owned = [(t, p) for t, n in layout.partitions.items() for p in range(n) if part_of(t, p, parts) == self.part]
        owned += [(t, int(p)) for t, p in (k.rsplit("|", 1) for k in self.offsets) if (t, int(p)) not in owned]
        return owned

    def _committed_after_snapshot(self) -> Counter[bytes]:
        found: Counter[bytes] = Counter()
        settings = self.sink.settings
        owned = self._owned()
        if not owned:
            return found
        consumer = Consumer(settings.kafka.client_config() | {
            "group.id": f"erpsync-out-{self.part}-resume", "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True})
        try:
            created = recovery_created_ms(settings.recovery_dir)
            unknown = [TopicPartition(t, p, created) for t, p in owned if f"{t}|{p}" not in self.offsets]
            starts = {(t, p): self.offsets[f"{t}|{p}"] for t, p in owned if f"{t}|{p}" in self.offsets}
            if unknown:
                for tp in self._call(lambda: consumer.offsets_for_times(unknown, timeout=30), "offsets_for_times"):
                    starts[(tp.topic, tp.partition)] = tp.offset  # -1: nothing since then
            todo: dict[tuple[str, int], int] = {}
            for (t, p), start in starts.items():
                tp = TopicPartition(t, p)
                _, high = self._call(functools.partial(consumer.get_watermark_offsets, tp, 30), "watermarks")
                if 0 <= start < high:
                    todo[(t, p)] = high
            if not todo:
                return found
            consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in todo])
            while todo:
                msg = consumer.poll(1.0)
                if msg is None:
                    if lifecycle.stop_requested():
                        lifecycle.abandon("stopped while reading Kafka outputs back")
                    continue
                at = (msg.topic() or "", msg.partition() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.pop(at, None)
                    continue
                found[fingerprint(at[0], at[1], msg.key(), msg.value())] += 1
                if (msg.offset() or 0) + 1 >= todo.get(at, 0):
                    todo.pop(at, None)
        finally:
            consumer.close()
        return found

    # -- writing
    def write_batch(self, items: list[Outgoing]) -> None:
        for o in items:
            if self.skip:
                fp = fingerprint(o.topic, o.partition, o.key, o.value)
                if self.skip[fp] > 0:
                    self.skip[fp] -= 1
                    if not self.skip[fp]:
                        del self.skip[fp]
                    continue
            if not self.in_tx:
                self._call(self.producer.begin_transaction, "begin_transaction")
                self.in_tx = True
            self.pending.append(o)
            if not self.doomed:
                self._produce(o)

    def _produce(self, o: Outgoing) -> None:
        while True:
            try:
                self.producer.produce(o.topic, value=o.value, key=o.key, partition=o.partition,
                                      headers=list(o.headers), on_delivery=functools.partial(self._on_delivery, o))
                return
            except BufferError:  # the local queue is full: Kafka is slow or away; let deliveries drain
                self.producer.poll(0.1)
                if lifecycle.stop_requested():
                    lifecycle.abandon("stopped while Kafka was not taking records")
            except KafkaException as exc:  # refused before sending (its size): set aside, see _commit
                err = _kafka_error(exc)
                if err is not None and (err.code() == KafkaError._STATE or err.txn_requires_abort()):
                    self.doomed = True  # the transaction failed meanwhile: see `doomed`
                    return
                if err is None or err.code() not in REFUSED:
                    raise
                self.refused.append((o, err))
                return

    def _on_delivery(self, o: Outgoing, err: Any, msg: Any) -> None:
        if err is not None:
            if err.code() in REFUSED:
                self.refused.append((o, err))
            else:
                self.failed.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            return
        key = f"{msg.topic()}|{msg.partition()}"
        self.offsets[key] = max(self.offsets.get(key, 0), msg.offset() + 1)

    def snapshot(self) -> PartState:
        if self.in_tx:
            self._commit()
        return dict(self.offsets)

    def _commit(self) -> None:
        while True:
            try:
                if self.refused or self.doomed:  # the broker refused some (a topic limit lowered since the start)
                    raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "records refused",
                                                    txn_requires_abort=True))
                self._call(lambda: self.producer.commit_transaction(30), "commit_transaction")
                if self.refused or self.doomed:  # (refused while committing)
                    continue
                break
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or not err.txn_requires_abort():
                    raise
                # Aborted (the coordinator moved during an outage, or records were refused): do it
                # again without the refused records, which go to the DLQ with the broker's reason.
                log.warning("kafka output part %d: transaction aborted (%s); writing its %d record(s) again",
                            self.part, one_line(exc), len(self.pending))
                self._call(lambda: self.producer.abort_transaction(30), "abort_transaction")
                self._set_aside_refused()
                self.failed.clear()
                self.doomed = False
                self._call(self.producer.begin_transaction, "begin_transaction")
                for o in self.pending:
                    if not self.doomed:
                        self._produce(o)
        if self.failed:
            failures, self.failed = self.failed, []
            raise KafkaException(f"{len(failures)} Kafka deliveries failed, first: {failures[0]}")
        self.in_tx = False
        by_topic: dict[str, list[int]] = {}
        for o in self.pending:
            by_topic.setdefault(o.topic, []).append(o.event_ms)
        for topic, times in by_topic.items():
            telemetry.sink_latency(SINK, topic, times)
        self.pending = []
        self.refusals.clear()

    def _set_aside_refused(self) -> None:
        """Records the broker refused leave the transaction for the DLQ (outside it: at least once).

        The broker refuses a whole produce request for one record too large, so the topic's limit is
        read again and only the records over it are set aside; the others are written again.
        """
        if not self.refused:
            return
        refused, self.refused = self.refused, []
        layout = self.sink.layout
        layout.forget([o.topic for o, _ in refused])  # its limit changed: read it again
        for o, _ in refused:
            self.refusals[id(o)] += 1
        # over the limit, refused for another reason than size, or refused again: the DLQ
        over = [(o, err) for o, err in refused if record_size(o) > layout.limit(o.topic)
                or err.code() != KafkaError.MSG_SIZE_TOO_LARGE or self.refusals[id(o)] > 1]
        ids = {id(o) for o, _ in over}
        self.pending = [o for o in self.pending if id(o) not in ids]
        Rejects.send_raw(self.sink.settings, "kafka", [
            (o.topic, o.key, f"{o.topic} refused a record of {record_size(o)} bytes: {err.str()}")
            for o, err in over])

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """A producer/consumer call, retried while Kafka is unreachable (with HEALTH, and stoppable)."""
        return guarded(SINK, fn, transient=_retriable)

    def close(self) -> None:
        try:
            if self.in_tx:
                # The dataflow ends without a snapshot of this transaction: abort; a resume writes it again.
                self.producer.abort_transaction(10)
        except KafkaException as exc:
            log.debug("kafka output part %d: abort at close failed: %s", self.part, exc)
        self.producer.flush(10)
