"""Kafka in: the raw change topics (and channel orders, replayed dead letters); topic administration.

bytewax recovery resumes each partition from its snapshotted offset, so records after the last
snapshot are read again; the pipeline's outputs stay exactly-once (``connectors.kafka_out``) or
fenced (Redis, the databases). A stop request (``connectors.lifecycle``) ends every partition: the
dataflow then drains and takes a final snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import tenacity
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from connectors import lifecycle
from erpsync import telemetry
from erpsync.settings import Settings
from state.records import DLQ_REPLAY_TOPIC, Progress, RawRecord

log = logging.getLogger(__name__)

Serializer = Callable[[str, str, dict[str, Any]], bytes]


class Lateness:
    """How much later than a partition's promise its records still arrive, over the last few seconds.

    A partition read to its end promises event time up to the clock when it says so (minus the
    configured grace, ``flows.idle_grace_ms``, and minus this lateness). A record stamped before that
    instant but not yet visible to the consumer then (in the producer's batch, on the way to the
    broker, appended after the consumer's last fetch) arrives behind the promise: the reader moves it
    just after it (``ReaderState.time_of``) and live output stops matching a replay. So each such
    arrival is measured, promise instant minus record timestamp, and the promises of every partition
    of this process step back by the largest of the last ``WINDOW_S`` seconds. Only records that
    crossed a promise count: the time a record waits in this process while the pipeline is busy
    does not (no partition with unread records promises anything), so load does not hold idle
    partitions back; a slow producer or broker does.
    """

    WINDOW_S = 10
    # A larger gap is no delivery delay (a record produced with an old timestamp, a producer's clock
    # stepped back): counted whole, it would hold every partition back for the window.
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


class Alignment:
    """Event-time alignment of the partitions this process reads (Flink calls it watermark alignment).

    The sequenced stages release an item only once every input partition has passed its time
    (``flows.sequencing``). While catching up a backlog, a partition whose records are sparse in
    time (channel orders, transaction metadata of a quiet source) reads hours ahead of a dense one
    (inventory balances) in a few batches, and everything it read waits in the stages' buffers,
    which every snapshot then writes whole: on 200,000 records, a few megabytes per shard and epoch.
    So a partition that is more than ``AHEAD_MS`` of event time ahead of the slowest partition
    still reading skips its turn until the slowest catches up. A partition read to its end (or not
    read yet) holds nobody back, and the slowest never waits, so the backlog always moves. Outputs
    do not change: the stages order by event time whatever the arrival order.
    """

    AHEAD_MS = 1_000

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the worker threads of a process share it
        self.clocks: dict[str, int] = {}  # partition -> timestamp of its newest record read (still reading)

    def read(self, channel: str, ms: int) -> None:
        with self.lock:
            self.clocks[channel] = ms

    def caught_up(self, channel: str) -> None:
        with self.lock:
            self.clocks.pop(channel, None)

    def ahead(self, channel: str) -> bool:
        with self.lock:
            mine = self.clocks.get(channel)
            return mine is not None and mine > min(self.clocks.values()) + self.AHEAD_MS


ALIGNMENT = Alignment()  # shared by the partitions of one process
ALIGNMENT_RETRY_MS = 5


class _WorkerConsumer:
    """One Kafka consumer for every raw partition a bytewax worker reads.

    With topics partitioned for a cluster (6 partitions x 20-odd tables) a consumer per partition
    would be a hundred librdkafka clients, each with its threads, buffers and connections. The
    partitions of a worker share one (incremental assignment); each partition keeps its own buffer,
    filled from the shared consumer by whichever partition asks first. Kafka keeps each
    partition's records in order, and so do the buffers.
    """

    _lock = threading.Lock()
    _by_worker: dict[int, _WorkerConsumer] = {}

    def __init__(self, config: dict[str, Any]) -> None:
        self.consumer = Consumer(config)
        self.parts: dict[tuple[str, int], _RawPartition] = {}

    @classmethod
    def of_this_worker(cls, config: dict[str, Any]) -> _WorkerConsumer:
        """The consumer of the calling worker thread (bytewax builds and reads a part on one worker)."""
        with cls._lock:
            me = threading.get_ident()
            if me not in cls._by_worker:
                cls._by_worker[me] = cls(config)
            return cls._by_worker[me]

    def add(self, part: _RawPartition, offset: int) -> None:
        self.parts[(part.topic, part.partition)] = part
        self.consumer.incremental_assign([TopicPartition(part.topic, part.partition, offset)])

    def remove(self, part: _RawPartition) -> None:
        self.parts.pop((part.topic, part.partition), None)
        self.consumer.incremental_unassign([TopicPartition(part.topic, part.partition)])
        if not self.parts:
            with self._lock:
                self._by_worker.pop(threading.get_ident(), None)
            self.consumer.close()

    def fill(self, max_messages: int) -> None:
        """What the consumer has now, into its partitions' buffers (EOFs marked on the partition)."""
        for msg in self.consumer.consume(max_messages, 0):
            part = self.parts.get((msg.topic() or "", msg.partition() or 0))
            if part is None:
                continue  # unassigned meanwhile
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    part.eof, part.end = True, msg.offset() or 0
                else:
                    log.warning("reading %s: %s", part.channel, err.str(), extra={"topic": part.topic})
                continue
            part.eof = False
            part.buffer.append(msg)
            if len(part.buffer) >= 2 * part.batch_size and not part.fetch_paused:
                # a partition that skips its turns (``Alignment``) must not buffer its whole backlog
                self.consumer.pause([TopicPartition(part.topic, part.partition)])
                part.fetch_paused = True

    def settled(self, part: _RawPartition) -> bool:
        """Nothing of `part` is on its way: the end it reached is still the partition's end.

        Its end-of-partition mark can be stale: newer records may already wait in the consumer's
        queue (behind other partitions' records) or be in a fetch response. The high watermark the
        consumer cached from its latest fetch response tells.
        """
        high = self.consumer.get_watermark_offsets(TopicPartition(part.topic, part.partition), cached=True)[1]
        return high <= part.end

    def drained(self, part: _RawPartition) -> None:
        """`part` took records from its buffer: fetch for it again once it runs low."""
        if part.fetch_paused and len(part.buffer) < part.batch_size:
            self.consumer.resume([TopicPartition(part.topic, part.partition)])
            part.fetch_paused = False


class _RawPartition(StatefulSourcePartition[RawRecord | Progress, int]):
    """One topic partition: its records in order, and ``Progress`` while it has nothing more to read."""

    def __init__(self, config: dict[str, Any], topic: str, partition: int, resume: int | None,
                 batch_size: int, quiet_ms: int) -> None:
        self.topic, self.partition = topic, partition
        self.channel = f"{topic}#{partition}"
        self.offset = OFFSET_BEGINNING if resume is None else resume
        self.batch_size = batch_size
        self.quiet_ms = quiet_ms
        self.buffer: deque[Any] = deque()
        self.eof = False  # the consumer reached the partition's end after its last buffered record
        self.end = 0  # the offset at which it did (past transaction markers)
        self.fetch_paused = False  # its buffer is full: the shared consumer does not fetch for it
        self.paused = False  # skipped its turn: ahead of the slowest partition (``Alignment``)
        self.told_ms = 0  # when Progress was last sent (the clock it promised, before lateness and grace)
        self.shared = _WorkerConsumer.of_this_worker(config)
        self.shared.add(self, self.offset)

    @property
    def at_end(self) -> bool:
        return self.eof and not self.buffer

    def next_batch(self) -> list[RawRecord | Progress]:
        if lifecycle.stop_requested():
            raise StopIteration
        if len(self.buffer) < self.batch_size:
            self.shared.fill(self.batch_size)
        out: list[RawRecord | Progress] = []
        if ALIGNMENT.ahead(self.channel):
            self.paused = True
            return out
        self.paused = False
        now = int(time.time() * 1000)
        newest = 0
        buffer = self.buffer
        for _ in range(min(len(buffer), self.batch_size)):
            msg = buffer.popleft()
            raw = _to_raw(msg, self.channel)
            if raw.timestamp_ms > 0:
                if raw.timestamp_ms < self.told_ms:  # was on its way when the partition promised
                    LATENESS.observe(now, self.told_ms - raw.timestamp_ms)
                newest = raw.timestamp_ms
            out.append(raw)
            self.offset = (msg.offset() or 0) + 1
        self.shared.drained(self)
        if self.at_end:
            ALIGNMENT.caught_up(self.channel)
        elif newest:
            ALIGNMENT.read(self.channel, newest)
        if self.at_end and (not out or now - self.told_ms >= self.quiet_ms) and self.shared.settled(self):
            out.append(Progress(self.channel, now - LATENESS.current(now)))
            self.told_ms = now
        return out

    def next_awake(self) -> datetime | None:
        # Caught up: look again soon (the marks of a quiet partition keep event time moving); ahead
        # of the others (``Alignment``): look again shortly.
        if self.at_end:
            return datetime.now(UTC) + timedelta(milliseconds=self.quiet_ms)
        return datetime.now(UTC) + timedelta(milliseconds=ALIGNMENT_RETRY_MS) if self.paused else None

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        ALIGNMENT.caught_up(self.channel)
        self.shared.remove(self)


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


# The input topics erpsync's own clients write (channel orders, re-injected dead letters): a record's
# event time is when Kafka appended it. A producer's timestamp is taken before the record leaves it
# (a producer that has just started connects first: hundreds of milliseconds), so the record could
# reach the pipeline behind what its partition already promised (``Lateness``). Not the Debezium
# topics: a transaction's BEGIN, rows and END go to different partitions, and only their producer's
# timestamps keep them in order.
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


def ensure_topics(settings: Settings, topics: Iterable[str], config: dict[str, str] | None = None, *,
                  partitions: int | None = None) -> None:
    """Create the topics that do not exist yet, with ``kafka.partitions`` partitions (or `partitions`).

    The replication factor is the broker's default. Topics that exist keep their partitions; `config`
    is set on them where it differs (their other settings kept). Returns once the cluster's metadata
    lists every topic it created with all its partitions: a broker answers metadata from a cache the
    controller updates after it answered the creation, and a reader that lists partitions too early
    would miss some (``topic_partitions``).
    """
    admin = AdminClient(settings.kafka.client_config())
    existing = set(admin.list_topics(timeout=10).topics)
    count = partitions or settings.kafka.partitions
    if config:
        _align_config(admin, sorted(set(topics) & existing), config)
    new = [NewTopic(t, num_partitions=count, replication_factor=-1, config=config or {})
           for t in sorted(set(topics) - existing)]
    if not new:
        return
    created = []
    for topic, future in admin.create_topics(new).items():
        try:
            future.result()
            created.append(topic)
            log.info("created topic %s (%d partitions)", topic, count)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    _await_metadata(admin, created, count)  # (one created meanwhile by another client has its own count)


METADATA_WAIT_S = 30


def _await_metadata(admin: AdminClient, topics: list[str], partitions: int) -> None:
    """Wait until the cluster's metadata lists `topics`, each with its `partitions` partitions."""

    def unlisted() -> list[str]:
        listed = admin.list_topics(timeout=10).topics
        return [t for t in topics if t not in listed or len(listed[t].partitions) < partitions]

    waiting = tenacity.Retrying(stop=tenacity.stop_after_delay(METADATA_WAIT_S), wait=tenacity.wait_fixed(0.1),
                                retry=tenacity.retry_if_result(bool), reraise=True)
    try:
        waiting(unlisted)
    except tenacity.RetryError:
        raise KafkaException(f"topics created but not in the cluster's metadata after {METADATA_WAIT_S} s: "
                             f"{', '.join(unlisted()[:5])}") from None


def _align_config(admin: AdminClient, topics: list[str], config: dict[str, str]) -> None:
    if not topics:
        return
    changes = []
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics])
    for resource, future in described.items():
        current = future.result()
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(config.items())
                   if k not in current or current[k].value != v]
        if entries:
            changes.append(ConfigResource(ConfigResource.Type.TOPIC, resource.name, incremental_configs=entries))
    for resource, future in admin.incremental_alter_configs(changes).items() if changes else ():
        future.result()
        log.info("topic %s: set %s", resource.name, ", ".join(f"{k}={v}" for k, v in sorted(config.items())))


def topic_partitions(settings: Settings) -> dict[str, list[int]]:
    """Every topic of the cluster and its partitions (one metadata request)."""
    admin = AdminClient(settings.kafka.client_config())
    return {t: sorted(m.partitions) for t, m in admin.list_topics(timeout=10).topics.items()}
