"""Raw Debezium topics -> canonical.<entity> topics (Avro), sync.exceptions and sync.dlq.

Records are keyed by their raw topic partition (Debezium partitions by row key, so one row's
versions never span partitions) and handed to the pure ``Canonicalizer`` a batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from erpsync import telemetry
from flows.common import Outcomes, split
from schemas.mapping import MAPPINGS_DIR, load_mappings
from schemas.registry import SchemaRegistry
from state.changes import Canonicalizer, ChangeLog, EntityInfo
from state.dead_letters import replayed_exception
from state.records import DeadLetter, Emit, Ignored, Outcome, RawRecord


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


class _Logic(StatefulBatchLogic[RawRecord, Outcome, ChangeLog]):
    def __init__(self, canonicalizer: Canonicalizer, resume: ChangeLog | None) -> None:
        self.canonicalizer = canonicalizer
        self.log: ChangeLog = {} if resume is None else resume

    def on_batch(self, values: list[RawRecord]) -> tuple[Iterable[Outcome], bool]:
        out: list[Outcome] = []
        apply = self.canonicalizer.apply
        for raw in values:
            self.log, outcomes = apply(self.log, raw)
            out.extend(outcomes)
            if telemetry.tracing():
                for o in outcomes:
                    if isinstance(o, Emit):
                        with telemetry.event_span("canonicalize", o.value["event_id"], raw_topic=raw.topic,
                                                  raw_partition=raw.partition, raw_offset=raw.offset, topic=o.topic):
                            pass
            if raw.replayed and not any(isinstance(o, DeadLetter) for o in outcomes):
                # A dead letter re-injected after a fix landed: its exception turns `replayed`.
                landed = ", ".join(sorted({o.topic if isinstance(o, Emit) else f"ignored: {o.reason}"
                                           for o in outcomes if isinstance(o, Emit | Ignored)}))
                out.append(replayed_exception(raw, landed or "nothing to apply"))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ChangeLog:
        # bytewax may serialize the snapshot after later batches changed the log: hand it a copy.
        # Shallow is enough: entries are tuples, replaced and never mutated.
        return dict(self.log)


def canonicalize(raw: Stream[RawRecord], canonicalizer: Canonicalizer) -> Outcomes:
    """The canonicalize dataflow on a stream of raw records."""
    keyed = op.key_on("canonicalize_by_partition", raw, lambda r: f"{r.topic}#{r.partition}")
    outcomes = op.stateful_batch(
        "canonicalize", keyed, lambda resume: _Logic(canonicalizer, resume)
    )
    return split("canonicalize", op.key_rm("canonicalize_unkey", outcomes))
