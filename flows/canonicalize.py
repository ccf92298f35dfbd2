"""Raw Debezium topics -> canonical.<entity> topics (Avro), sync.exceptions and sync.dlq, in event time.

Records are keyed by the channel they were read from (a raw topic partition: Debezium partitions by
row key, so one row's versions never span partitions) and handed to the pure ``PartitionReader`` a
batch at a time. After each batch the reader marks how far event time has come on its channel; the
marks travel with the canonical events to the sequenced stages (``flows.sequencing``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
from state.sequencer import Mark

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


class _Logic(StatefulBatchLogic[RawRecord | Progress, Any, ReaderState]):
    def __init__(self, reader: PartitionReader, resume: ReaderState | None) -> None:
        self.reader = reader
        self.state = resume
        self.channel = ""

    def on_batch(self, values: list[RawRecord | Progress]) -> tuple[Iterable[Any], bool]:
        return self._batch(values)

    def _batch(self, values: list[RawRecord | Progress]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        apply = self.reader.apply
        delayed = self.state.delayed if self.state is not None else 0
        for item in values:
            self.channel = item.channel if isinstance(item, Progress) else item.read_from
            self.state, outcomes = apply(self.state, item)
            out.extend(outcomes)
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
        if self.state is not None and self.state.delayed > delayed:
            telemetry.count("read", "delayed", self.state.delayed - delayed)
            log.info("%s: %d %s, moved just after it (delayed: %d in all)", self.channel,
                     self.state.delayed - delayed, DELAYED, self.state.delayed)
        if self.state is not None:
            out.extend(self.reader.flush(self.state, self.channel))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ReaderState:
        return ReaderState() if self.state is None else self.state.copy()


def _count_read(values: list[RawRecord | Progress], out: list[Any]) -> None:
    """erpsync.records of the read step, a batch at a time: in, out (canonical events, orders), dlq, ignored."""
    records = sum(isinstance(v, RawRecord) for v in values)
    if not records:
        return
    dlq = ignored = marks = 0
    for o in out:
        if isinstance(o, DeadLetter):
            dlq += 1
        elif isinstance(o, Ignored):
            ignored += 1
        elif isinstance(o, Mark):  # a source's Progress read in the same batch: not an output record
            marks += 1
    telemetry.count("read", "in", records)
    telemetry.count("read", "out", len(out) - dlq - ignored - marks)
    if dlq:
        telemetry.count("read", "dlq", dlq)
    if ignored:
        telemetry.count("read", "ignored", ignored)


def read(raw: Stream[RawRecord | Progress], reader: PartitionReader) -> Stream[Any]:
    """Every input channel through its reader: canonical events, channel orders, marks, DLQ records, ignores."""
    keyed = op.key_on("read_by_channel", raw,
                      lambda r: r.channel if isinstance(r, Progress) else r.read_from)
    return op.key_rm("read_unkey", op.stateful_batch("read", keyed, lambda resume: _Logic(reader, resume)))
