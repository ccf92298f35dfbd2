"""Raw Debezium topics -> canonical.<entity> topics (Avro), sync.exceptions and sync.dlq, in event time.

Each input channel (a raw topic partition: Debezium partitions by row key, so one row's versions
never span partitions) has its pure ``PartitionReader`` state. The channels are read in a few read
groups (``state.sequencer.read_groups``, one key each, as many as the stages have shards): a group's
step hands each channel's records to its reader a batch at a time, and after each batch merges the
marks of its channels, how far event time has come on each, into the group's one mark
(``MarkMerger``). The group's mark leaves the step after the items it covers and from the same
worker, so it travels behind them to the sequenced stages (``flows.sequencing``); merging marks
anywhere else lets them overtake their items between processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from erpsync import telemetry
from schemas.mapping import MAPPINGS_DIR, load_mappings
from schemas.registry import SchemaRegistry
from state.changes import Canonicalizer, EntityInfo, PartitionReader, ReaderState
from state.dead_letters import replayed_exception
from state.records import DeadLetter, Emit, Ignored, Progress, RawRecord
from state.sequencer import Mark, MarkMerger, MergeState, read_group

log = logging.getLogger(__name__)
# Logged with the count of records that arrived behind their partition's promise (bench.freshness sums them).
DELAYED = "record(s) arrived behind their partition's promise"


def make_canonicalizer(registry: SchemaRegistry, mappings_dir: Path | None = None) -> Canonicalizer:
    """The canonicalizer for the mappings on disk (the packaged ones by default), checked against the Avro contract."""
    entities = registry.entities()
    mappings = load_mappings(
        {name: e.key for name, e in entities.items()},
        mappings_dir or MAPPINGS_DIR,
        entity_fields={name: frozenset(e.fields) for name, e in entities.items()},
    )
    return Canonicalizer(
        mappings, {name: EntityInfo(e.name, e.owner, e.topic) for name, e in entities.items()}
    )


@dataclass(slots=True)
class GroupState:
    """A read group's state: each channel's reader, and the merge of their marks."""

    readers: dict[str, ReaderState] = field(default_factory=dict)
    merge: MergeState = field(default_factory=MergeState)

    def copy(self) -> GroupState:
        return GroupState({c: r.copy() for c, r in self.readers.items()}, self.merge.copy())


class _Logic(StatefulBatchLogic[RawRecord | Progress, Any, GroupState]):
    def __init__(self, reader: PartitionReader, merger_of: Callable[[str], MarkMerger],
                 resume: GroupState | None) -> None:
        self.reader = reader
        self.merger_of = merger_of  # channel -> the merger of its read group
        self.state = resume or GroupState()
        self.merger: MarkMerger | None = None  # the group's, once its key is known (the first batch)

    def on_batch(self, values: list[RawRecord | Progress]) -> tuple[Iterable[Any], bool]:
        return self._batch(values)

    def _batch(self, values: list[RawRecord | Progress]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        marks: list[Mark] = []
        apply = self.reader.apply
        readers = self.state.readers
        delayed: dict[str, int] = {}  # channel -> records delayed before this batch
        for item in values:
            channel = item.channel if isinstance(item, Progress) else item.read_from
            before = readers.get(channel)
            if channel not in delayed:
                delayed[channel] = before.delayed if before is not None else 0
            state, outcomes = apply(before, item)
            readers[channel] = state
            for o in outcomes:
                (marks if isinstance(o, Mark) else out).append(o)
            if isinstance(item, RawRecord):
                if telemetry.tracing():
                    for o in outcomes:
                        if isinstance(o, Emit) and "event_id" in o.value:
                            with telemetry.event_span("canonicalize", o.value["event_id"], raw_topic=item.topic,
                                                      raw_partition=item.partition, raw_offset=item.offset,
                                                      topic=o.topic):
                                pass
                if item.replayed and not any(isinstance(o, DeadLetter) for o in outcomes):
                    # A dead letter re-injected after a fix landed: its exception turns `replayed`.
                    landed = ", ".join(sorted({o.topic if isinstance(o, Emit) else f"ignored: {o.reason}"
                                               for o in outcomes if isinstance(o, Emit | Ignored)}))
                    out.append(replayed_exception(item, landed or "nothing to apply"))
        _count_read(values, out)
        for channel, was in delayed.items():
            state = readers[channel]
            if state.delayed > was:
                telemetry.count("read", "delayed", state.delayed - was)
                log.info("%s: %d %s, moved just after it (delayed: %d in all)", channel, state.delayed - was,
                         DELAYED, state.delayed)
            marks.extend(self.reader.flush(state, channel))
        if self.merger is None:
            self.merger = self.merger_of(next(iter(delayed)))
        self.state.merge, merged = self.merger.apply(self.state.merge, marks)
        out.extend(merged)  # after every item it covers, from this worker: it travels behind them
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> GroupState:
        return self.state.copy()


def _count_read(values: list[RawRecord | Progress], out: list[Any]) -> None:
    """erpsync.records of the read step, a batch at a time: in, out (canonical events, orders), dlq, ignored."""
    records = sum(isinstance(v, RawRecord) for v in values)
    if not records:
        return
    dlq = ignored = 0
    for o in out:  # (the batch's marks are not in `out` yet: they are not output records)
        if isinstance(o, DeadLetter):
            dlq += 1
        elif isinstance(o, Ignored):
            ignored += 1
    telemetry.count("read", "in", records)
    telemetry.count("read", "out", len(out) - dlq - ignored)
    if dlq:
        telemetry.count("read", "dlq", dlq)
    if ignored:
        telemetry.count("read", "ignored", ignored)


def read(raw: Stream[RawRecord | Progress], reader: PartitionReader, channels: Mapping[str, Sequence[str]],
         groups: int) -> Stream[Any]:
    """Every input channel through its reader: canonical events, channel orders, DLQ records, ignores.

    And the marks of each read group (`channels`: group -> its channels, ``state.sequencer.read_groups``).
    """
    group_of = {c: g for g, members in channels.items() for c in members}  # (a dict: read per record)
    mergers = {g: MarkMerger(members, g) for g, members in channels.items()}

    def group(channel: str) -> str:
        return group_of.get(channel) or read_group(channel, groups)

    def merger_of(channel: str) -> MarkMerger:
        g = group(channel)
        return mergers.get(g) or MarkMerger((), g)  # a channel nobody waits for: its group merges nothing

    keyed = op.key_on("read_by_group", raw, lambda r: group(r.channel if isinstance(r, Progress) else r.read_from))
    return op.key_rm("read_unkey", op.stateful_batch(
        "read_groups", keyed, lambda resume: _Logic(reader, merger_of, resume)))
