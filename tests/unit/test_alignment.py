"""Event-time alignment of the live source: a batch stops where its partition runs ahead of the slowest.

The partitions are real ``_RawPartition``s reading from buffers that a stand-in for the shared
consumer leaves as they are (records are put in them by hand): what is tested is the cut of each
batch by event time, not Kafka.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE

import connectors.kafka as kafka
from connectors.kafka import Alignment
from state.records import RawRecord

AHEAD = Alignment.AHEAD_MS
T0 = 1_764_000_000_000  # the tests' times are milliseconds after this


class Message:
    """What the partition reads of a confluent-kafka message."""

    def __init__(self, topic: str, offset: int, ts: int | None) -> None:
        self._topic, self._offset, self._ts = topic, offset, ts

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._ts) if self._ts is not None else (TIMESTAMP_NOT_AVAILABLE, -1)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"

    def headers(self) -> None:
        return None


class Shared:
    """The shared consumer, without Kafka: nothing more to fetch, never at the end."""

    def add(self, part: Any, offset: int) -> None: ...

    def fill(self, max_messages: int) -> None: ...

    def drained(self, part: Any) -> None: ...

    def settled(self, part: Any) -> bool:
        return False

    def remove(self, part: Any) -> None: ...


@pytest.fixture
def alignment(monkeypatch: pytest.MonkeyPatch) -> Alignment:
    fresh = Alignment()
    monkeypatch.setattr(kafka, "ALIGNMENT", fresh)
    monkeypatch.setattr(kafka._WorkerConsumer, "of_this_worker", classmethod(lambda cls, config: Shared()))
    return fresh


def partition(topic: str, times: list[int | None], batch_size: int = 100) -> kafka._RawPartition:
    part = kafka._RawPartition({}, topic, 0, None, batch_size, quiet_ms=20)
    part.buffer.extend(Message(topic, i, None if ts is None else T0 + ts) for i, ts in enumerate(times))
    return part


def times(batch: list[Any]) -> list[int]:
    """The batch's records' times, from T0 (0: a record without a timestamp)."""
    return [r.timestamp_ms - T0 if r.timestamp_ms else 0 for r in batch if isinstance(r, RawRecord)]


def test_a_sparse_partition_reads_only_up_to_the_bound_past_the_slowest(alignment: Alignment) -> None:
    dense = partition("dense", list(range(0, 10_000, 10)), batch_size=50)
    sparse = partition("sparse", [0, 400, 900, 5_000, 60_000, 3_600_000])
    assert times(dense.next_batch()) == list(range(0, 500, 10))  # the first: no bound yet
    got = times(sparse.next_batch())
    assert got == [0, 400, 900]  # up to 490 + AHEAD: the hour of records past it waits in its buffer
    assert len(sparse.buffer) == 3 and sparse.paused is False
    assert times(sparse.next_batch()) == []  # nothing new within the bound: skips its turn
    assert sparse.paused is True
    taken: list[int] = []
    while not taken:  # each takes its turns, as bytewax polls every partition
        dense.next_batch()
        assert alignment.clocks["dense#0"] <= alignment.clocks["sparse#0"] + AHEAD  # dense is bound too
        taken = times(sparse.next_batch())
    assert taken == [5_000]  # once dense passed 900: the slowest moves past its gap, one record
    assert times(sparse.next_batch()) == []


def test_the_slowest_partition_always_moves_past_a_gap(alignment: Alignment) -> None:
    gappy = partition("gappy", [0, 1_000_000, 1_000_001, 2_000_000])
    other = partition("other", [500, 600, 5_000_000])
    assert times(gappy.next_batch()) == [0]
    assert times(other.next_batch()) == [500, 600]
    # gappy is the slowest: it takes its next record, however far ahead, and no more beyond the bound
    assert times(gappy.next_batch()) == [1_000_000]
    assert times(gappy.next_batch()) == []  # now other is the slowest, at 600
    assert times(other.next_batch()) == [5_000_000]
    assert times(gappy.next_batch()) == [1_000_001]


def test_a_partition_not_reading_yet_takes_one_record_then_waits(alignment: Alignment) -> None:
    early = partition("early", list(range(0, 1_000, 100)))
    early.next_batch()
    late = partition("late", [7_200_000, 7_200_001])  # a topic whose records start two hours later
    assert times(late.next_batch()) == [7_200_000]
    assert times(late.next_batch()) == []


def test_a_partition_read_to_its_end_holds_nobody_back(alignment: Alignment) -> None:
    done = partition("done", [0])
    done.next_batch()
    alignment.caught_up("done")
    busy = partition("busy", [0, 50_000, 100_000])
    assert times(busy.next_batch()) == [0]
    assert alignment.bound("busy") == (T0 + AHEAD, True)
    assert times(busy.next_batch()) == [50_000]  # the only partition reading: always the slowest


def test_records_without_a_timestamp_are_never_held_back(alignment: Alignment) -> None:
    slow = partition("slow", [0, 10_000_000])
    slow.next_batch()
    fast = partition("fast", [5_000_000, None, None, 5_000_001])
    assert times(fast.next_batch()) == [5_000_000, 0, 0]  # ahead after its first, but these have no time
    assert times(slow.next_batch()) == [10_000_000]
    assert times(fast.next_batch()) == [5_000_001]
