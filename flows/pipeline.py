"""The whole pipeline as one dataflow, with sources and sinks injected.

``erpsync run`` wires Kafka in and Kafka out; ``erpsync replay`` wires a kcat dump in and a file
out. The dataflow code between them is the same, which is what makes a replay a faithful
reproduction of production.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from erpsync import telemetry
from flows.availability import availability, commitments
from flows.canonicalize import canonicalize, make_canonicalizer
from flows.orders import COMMERCE_ORDERS_TOPIC, orders, sla_clock
from schemas.registry import SchemaRegistry
from state import EXCEPTION_SCHEMA
from state.ats import AVAILABILITY_SCHEMA
from state.changes import Canonicalizer
from state.channels import Channel
from state.dead_letters import dead_letter_exception
from state.intake import ACCEPTED_ORDER_SCHEMA
from state.order_status import ORDER_STATUS_SCHEMA
from state.records import DeadLetter, Emit, Ignored, RawRecord
from state.sla import Deadline, Slas


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
    order_intake: Callable[[str, Stream[Emit]], None]  # accepted orders, for the ERP's erp.order_intake
    order_status: Callable[[str, Stream[Emit]], None]  # OrderStatus records, for the ops database
    exceptions: Callable[[str, Stream[Emit]], None]  # SyncException records, for the ops database queue


def _nowhere(step_id: str, stream: Stream[Emit]) -> None:
    """A store replay does not have; its records still reach the output as topic records."""


def replay_sinks(collect: Callable[[str, Stream[object]], None]) -> Sinks:
    """Every record to one collector; the stores (Redis, databases) are not written."""
    return Sinks(collect, collect, collect, _nowhere, _nowhere, _nowhere, _nowhere)


def build_flow(registry: SchemaRegistry, channels: Sequence[Channel], *, sources: Sources, sinks: Sinks,
               slas: Slas | None = None, live: bool = True, canonicalizer: Canonicalizer | None = None,
               streams: Sequence[str] = ()) -> Dataflow:
    """live=False for replay: event time only, no wall-clock timers (see flows.availability).

    streams: the raw topic partitions a live pipeline reads ("<topic>#<partition>", see flows.orders).
    canonicalizer: the one of the packaged mappings unless given.
    """
    flow = Dataflow("erpsync")
    slas = slas or Slas()
    raw, unreadable = sources.raw(flow)
    _count("input", "in", raw)
    _count("input", "dlq", unreadable)
    channel_orders = op.branch("is_channel_order", raw, lambda r: r.topic == COMMERCE_ORDERS_TOPIC)
    _count("canonicalize", "in", channel_orders.falses)
    _count("orders", "in", channel_orders.trues)
    canon = canonicalize(channel_orders.falses, canonicalizer or make_canonicalizer(registry))
    committed = commitments(canon.emits)
    governed = orders(canon.emits, committed, channel_orders.trues, channels, slas, live=live, streams=streams)
    ledger_out = availability(canon.emits, committed, governed.reservations, channels, live=live,
                              unknown_sku_ms=slas.unknown_sku_ms)
    ledger_split = op.branch("availability_deadlines", ledger_out, lambda o: isinstance(o, Deadline))
    derived: Stream[Emit] = ledger_split.falses  # type: ignore[assignment]
    fired = sla_clock(op.merge("all_deadlines", governed.deadlines, ledger_split.trues), governed.ticks, live=live)
    dead_letters = op.merge("dead_letters", unreadable, canon.dead_letters, governed.dead_letters)
    # every dead letter is also an exception (replayable, see state.dead_letters)
    dead_letter_exceptions = op.map("dead_letter_exceptions", dead_letters, dead_letter_exception)
    emits = op.merge("all_emits", canon.emits, derived, governed.emits, fired, dead_letter_exceptions)
    for step, outcomes in (("canonicalize", canon), ("orders", governed)):
        _count(step, "out", outcomes.emits)
        _count(step, "dlq", outcomes.dead_letters)
        _count(step, "ignored", outcomes.ignored)
    _count("availability", "out", derived)
    sinks.emits("out_emits", emits)
    exceptions = op.filter("exceptions_only", emits, lambda e: e.schema == EXCEPTION_SCHEMA)
    op.flat_map_batch("count_exceptions", exceptions, _count_exceptions)
    sinks.exceptions("out_exceptions", exceptions)
    sinks.availability("out_availability", op.filter(
        "availability_only", derived, lambda e: e.schema == AVAILABILITY_SCHEMA))
    sinks.order_intake("out_order_intake", op.filter(
        "accepted_orders_only", governed.emits, lambda e: e.schema == ACCEPTED_ORDER_SCHEMA))
    sinks.order_status("out_order_status", op.filter(
        "order_status_only", governed.emits, lambda e: e.schema == ORDER_STATUS_SCHEMA))
    sinks.dead_letters("out_dead_letters", dead_letters)
    sinks.ignored("out_ignored", op.merge("all_ignored", canon.ignored, governed.ignored))
    return flow


def _count(step: str, outcome: str, stream: Stream[Any]) -> None:
    """Count a step's records per outcome (state.records), a batch at a time (a side branch)."""

    def count(batch: list[Any]) -> list[Any]:
        telemetry.count(step, outcome, len(batch))
        return []

    op.flat_map_batch(f"count_{step}_{outcome}", stream, count)


def _count_exceptions(batch: list[Emit]) -> list[Any]:
    """erpsync.exceptions by kind, a batch at a time."""
    for kind, n in Counter(e.value["kind"] for e in batch).items():
        telemetry.EXCEPTIONS.add(n, {"kind": kind})
    return []
