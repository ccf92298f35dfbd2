"""The few record types that flow between steps, shared by every dataflow and connector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, TypeVar

T = TypeVar("T")


def pickled_by_position(cls: type[T]) -> type[T]:
    """Pickle a dataclass as a call of its constructor with its fields in order, without their names.

    Records are pickled between workers and in every snapshot, and a key's state stays pickled while
    the key rests (``flows.sequencing``): positionally, a SKU's states are an eighth to a third smaller
    and pickle and unpickle about a third faster than in the generic ``(None, {slot: value})`` form
    slotted dataclasses get. Every field must be an ``__init__`` argument. Decorate above ``@dataclass``.
    The records on the hot path (``RawRecord``, ``Emit``, ``Mark``, ``Stamped``) write their
    ``__reduce__`` out instead: the same form, and a quarter faster than this generic one (measured
    on 1,000 ``Stamped`` records of an ``Emit``: 400 against 500 us).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    values = attrgetter(*names) if len(names) > 1 else lambda obj: (getattr(obj, names[0]),)

    def __reduce__(self: T) -> tuple[Any, ...]:
        return (cls, values(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as read: from a topic (live) or from a kcat JSON dump (replay)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0  # the record's Kafka timestamp (0: not known)
    replayed: bool = False  # re-injected from the DLQ by `erpsync dlq replay` (coordinates are the original's)
    channel: str = ""  # "<topic>#<partition>" it was read from ("" : its own coordinates)

    def __reduce__(self) -> tuple[Any, ...]:  # see Emit.__reduce__
        return (RawRecord, (self.topic, self.partition, self.offset, self.key, self.value, self.timestamp_ms,
                            self.replayed, self.channel))

    @property
    def read_from(self) -> str:
        """The input channel: what the record's position in event time is judged against."""
        return self.channel or f"{self.topic}#{self.partition}"


@dataclass(frozen=True, slots=True)
class Progress:
    """A source partition has nothing more to read for now (`wall_ms`: the reader's clock), or ever (None)."""

    channel: str  # "<topic>#<partition>"
    wall_ms: int | None


@dataclass(frozen=True, slots=True)
class Emit:
    """A record to publish: `value` is shaped by the Avro schema `schema` (full name).

    Canonical events also carry, for the steps that consume them (never published): their event
    time, order within it and source transaction (``state.sequencer``), and `before`, the row's
    previous image when the source logs one, so a row that moves between keys can be retracted from
    its old key.
    """

    topic: str
    key: str
    schema: str
    value: dict[str, Any]
    time: int = 0
    order: tuple[Any, ...] = ()
    before: dict[str, Any] | None = None
    tx: Any = None  # the source transaction (system, id) it is part of

    def __reduce__(self) -> tuple[Any, ...]:
        # Every snapshot pickles the records waiting in the sequenced stages: positionally, this is
        # half the work of the generic __getstate__ dataclasses give slotted classes.
        return (Emit, (self.topic, self.key, self.schema, self.value, self.time, self.order, self.before, self.tx))


def newest_versions(items: list[Emit], key: Callable[[dict[str, Any]], Any]) -> list[Emit]:
    """Each key's record of the highest `version` (the last of equal ones), in the order keys first appear.

    What a version-fenced store ends with after writing the whole batch in any order; a catch-up
    publishes many versions of a key within one batch, and writing them all was most of its store work.
    """
    newest: dict[Any, Emit] = {}
    for e in items:
        k = key(e.value)
        old = newest.get(k)
        if old is None or e.value["version"] >= old.value["version"]:
            newest[k] = e
    return list(newest.values())


def event_ms_of(e: Emit) -> int:
    """The source event time a published record reflects (0: none), for the sync-latency metric."""
    v = e.value
    source = v.get("source")
    if isinstance(source, dict) and "commit_ts_ms" in source:
        return int(source["commit_ts_ms"])
    for name in ("event_time_ms", "last_fact_ms", "last_seen_ms", "accepted_at_ms"):
        if name in v:
            return int(v[name])
    return 0


@dataclass(frozen=True, slots=True)
class Reseed:
    """A current value written again to stores that lost their data (`stores`: "redis", "ops-db"), nowhere else."""

    stores: frozenset[str]
    emit: Emit


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed, kept byte for byte with the reason (goes to sync.dlq)."""

    raw: RawRecord
    reason: str
    step: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """An input deliberately not turned into output; counted by reason so nothing vanishes unseen."""

    reason: str
    topic: str
    partition: int
    offset: int


Outcome = Emit | DeadLetter | Ignored

DLQ_TOPIC = "sync.dlq"
DLQ_REPLAY_TOPIC = "sync.dlq-replay"  # DLQ records re-injected after a fix, with their original coordinates
EXCEPTIONS_TOPIC = "sync.exceptions"
