"""What a raw partition read to its end promises (``connectors.kafka``), on the real broker.

A promise ("nothing older than this instant is still to come") releases everything the sequenced
stages hold up to it, so it decides freshness; a record that arrives behind it breaks live = replay.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

import connectors.kafka as source
from connectors.kafka import Lateness, RawSource, ensure_topics
from erpsync.settings import Settings
from state.records import Progress, RawRecord


@pytest.fixture
def topic(settings: Settings) -> str:
    name = f"test.promises.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [name], partitions=2)
    return name


@pytest.fixture
def lateness(monkeypatch: pytest.MonkeyPatch) -> Lateness:
    fresh = Lateness()
    monkeypatch.setattr(source, "LATENESS", fresh)
    return fresh


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    p = Producer(settings.kafka.client_config())
    yield p
    p.flush(10)


def _open(settings: Settings, topic: str, partition: int, batch_size: int = 100) -> source._RawPartition:
    """Partition `partition` read from the beginning, as the pipeline's source reads it."""
    return source._RawPartition(RawSource(settings, {}).config, topic, partition, None, batch_size, quiet_ms=20)


def _until(part: source._RawPartition, want: type, timeout_s: float = 20) -> list[RawRecord | Progress]:
    """Batches of `part` until one holds an item of type `want`; every item read on the way."""
    seen: list[RawRecord | Progress] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen += part.next_batch()
        if any(isinstance(item, want) for item in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no {want.__name__} from {part.channel} in {timeout_s} s; read {seen}")


def _send(producer: Producer, topic: str, partition: int, n: int = 1, timestamp_ms: int = 0) -> None:
    for i in range(n):
        producer.produce(topic, value=b"{}", key=str(i).encode(), partition=partition, timestamp=timestamp_ms)
    producer.flush(10)


def test_records_that_wait_while_the_pipeline_is_busy_hold_nobody_back(
        settings: Settings, topic: str, lateness: Lateness, producer: Producer) -> None:
    part = _open(settings, topic, 0)
    try:
        _until(part, Progress)  # read to its (empty) end: it promises
        _send(producer, topic, 0, 20)
        time.sleep(1.5)  # the pipeline is busy elsewhere: the records wait in this process
        _until(part, RawRecord)
        assert lateness.current(int(time.time() * 1000)) == 0
        promise = _until(part, Progress)[-1]
        assert isinstance(promise, Progress) and promise.wall_ms is not None
        assert promise.wall_ms >= int(time.time() * 1000) - 500
    finally:
        part.close()


def test_a_record_on_its_way_when_its_partition_promised_steps_every_promise_back(
        settings: Settings, topic: str, lateness: Lateness, producer: Producer) -> None:
    part = _open(settings, topic, 0)
    try:
        promised = _until(part, Progress)[-1]
        assert isinstance(promised, Progress) and promised.wall_ms is not None
        slow = promised.wall_ms - 700  # stamped 700 ms before the promise, delivered after it
        _send(producer, topic, 0, timestamp_ms=slow)
        _until(part, RawRecord)
        assert lateness.current(int(time.time() * 1000)) >= 700
        again = _until(part, Progress)[-1]
        assert isinstance(again, Progress) and again.wall_ms is not None
        assert again.wall_ms <= int(time.time() * 1000) - 700
    finally:
        part.close()


def test_no_promise_while_the_shared_consumer_still_holds_records(
        settings: Settings, topic: str, lateness: Lateness, producer: Producer) -> None:
    """Both partitions share the worker's consumer; the quiet one's record queues behind the busy one's."""
    quiet, busy = _open(settings, topic, 0, batch_size=10), _open(settings, topic, 1, batch_size=10)
    try:
        _until(quiet, Progress)
        _until(busy, Progress)
        _send(producer, topic, 1, 200)
        time.sleep(1)  # fetched into the consumer's queue
        _send(producer, topic, 0)
        time.sleep(1)  # fetched too, behind the busy partition's records
        read = _until(quiet, RawRecord)
        first_record = next(i for i, item in enumerate(read) if isinstance(item, RawRecord))
        assert not any(isinstance(item, Progress) for item in read[:first_record]), \
            "the quiet partition promised while its record still waited in the consumer's queue"
    finally:
        quiet.close()
        busy.close()


def test_a_quiet_partition_keeps_promising_while_another_reads_its_backlog(
        settings: Settings, topic: str, lateness: Lateness, producer: Producer) -> None:
    """A catch-up must not hold event time back: the stages would buffer the whole backlog."""
    _send(producer, topic, 1, 3000)
    quiet, busy = _open(settings, topic, 0, batch_size=10), _open(settings, topic, 1, batch_size=10)
    try:
        read = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            read += sum(isinstance(item, RawRecord) for item in busy.next_batch())
            if any(isinstance(item, Progress) for item in quiet.next_batch()):
                break
        else:
            raise AssertionError("the quiet partition promised nothing in 30 s")
        assert read < 3000, "the quiet partition promised only once the backlog was read"
    finally:
        quiet.close()
        busy.close()


def test_the_topics_erpsync_clients_write_take_the_brokers_append_time(
        settings: Settings, topic: str, producer: Producer) -> None:
    """A producer's timestamp is taken before its first connection: that record would land behind promises."""
    ensure_topics(settings, [topic], source.APPEND_TIME)  # the topic exists: its setting is changed
    stale = int(time.time() * 1000) - 60_000
    _send(producer, topic, 0, timestamp_ms=stale)
    part = _open(settings, topic, 0)
    try:
        [record] = [item for item in _until(part, RawRecord) if isinstance(item, RawRecord)]
        assert record.timestamp_ms >= stale + 50_000
    finally:
        part.close()
