"""The whole pipeline as one dataflow, with sources and sinks injected.

``erpsync run`` wires Kafka in and Kafka out; ``erpsync replay`` wires a kcat dump in and a file
out. The dataflow code between them is the same, which is what makes a replay a faithful
reproduction of production.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from erpsync.channels import Channel
from erpsync.flows.availability import availability
from erpsync.flows.canonicalize import canonicalize, make_canonicalizer
from erpsync.records import DeadLetter, Emit, Ignored, RawRecord
from erpsync.schemas.registry import SchemaRegistry
from erpsync.state.ats import AVAILABILITY_SCHEMA


@dataclass(frozen=True)
class Sources:
    """raw(flow) adds the input steps and returns (raw records, records the input could not read)."""

    raw: Callable[[Dataflow], tuple[Stream[RawRecord], Stream[DeadLetter]]]


@dataclass(frozen=True)
class Sinks:
    """Each takes (step id, stream) and adds the output steps."""

    emits: Callable[[str, Stream[Emit]], None]  # every record for a Kafka topic
    dead_letters: Callable[[str, Stream[DeadLetter]], None]
    ignored: Callable[[str, Stream[Ignored]], None]
    availability: Callable[[str, Stream[Emit]], None]  # Availability records, for the stores storefronts read


def build_flow(registry: SchemaRegistry, channels: Sequence[Channel], *, sources: Sources, sinks: Sinks,
               live: bool = True) -> Dataflow:
    """live=False for replay: event time only, no wall-clock timers (see flows.availability)."""
    flow = Dataflow("erpsync")
    raw, unreadable = sources.raw(flow)
    canon = canonicalize(raw, make_canonicalizer(registry))
    derived = availability(canon.emits, None, channels, live=live)
    sinks.emits("out_emits", op.merge("all_emits", canon.emits, derived))
    sinks.availability("out_availability", op.filter(
        "availability_only", derived, lambda e: e.schema == AVAILABILITY_SCHEMA))
    sinks.dead_letters("out_dead_letters", op.merge("dead_letters", unreadable, canon.dead_letters))
    sinks.ignored("out_ignored", canon.ignored)
    return flow
