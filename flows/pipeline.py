"""The whole pipeline as one dataflow, with sources and sinks injected.

``erpsync run`` wires Kafka in and Kafka, Redis and the databases out; ``erpsync replay`` wires a kcat
dump in and a file out. The dataflow between them is the same, which is what makes a replay a
faithful reproduction of production.

Shape (each stage is sequenced in event time, see ``flows.sequencing``; keys in brackets):

    read [raw partition] -> canonical events, channel orders, marks
    S1  order_lines [ERP order]   intake_entry [channel order]   route_shipments [shipment]
    S2  network [SKU]             customers [customer]           route_orders [ERP order]
    S3  arbiter [one key: pending reservations]
    S4  ats [SKU]                 status [channel order]
    S5  timers [minute due]

Step ids are stable strings: bytewax recovery keys state by them, so never rename one casually.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from erpsync import telemetry
from flows.canonicalize import make_canonicalizer, read
from flows.sequencing import StageStep, stage
from schemas.registry import SchemaRegistry
from state import EXCEPTION_SCHEMA
from state.availability import (
    ALLOCATION_TOPIC,
    AVAILABILITY_SCHEMA,
    INVENTORY_TOPIC,
    ITEM_TOPIC,
    ORDER_INTAKE_TOPIC,
    ORDER_LINE_TOPIC,
    ORDER_TOPIC,
    PRICE_TOPIC,
    Commitment,
    LineAnswer,
    LineCheck,
    NetworkState,
    OrderLines,
    Reservation,
    SkuAts,
    SkuNetwork,
)
from state.changes import Canonicalizer, PartitionReader
from state.channels import Channel
from state.dead_letters import dead_letter_exception
from state.intake import (
    ACCEPTED_ORDER_SCHEMA,
    ARBITER_KEY,
    CUSTOMER_TOPIC,
    Arbiter,
    ChannelOrder,
    CustomerAnswer,
    CustomerBook,
    CustomerCheck,
    IntakeDecision,
    IntakeEntry,
    ToDecide,
    read_channel_order,
)
from state.order_status import (
    ORDER_STATUS_SCHEMA,
    SHIPMENT_TOPICS,
    OrderRouter,
    Routed,
    ShipmentRouter,
    Slas,
    StatusBook,
)
from state.records import DeadLetter, Emit, Ignored, Progress, RawRecord, Reseed
from state.sequencer import Mark, Stamped, read_groups
from state.timers import Deadline, Timers

COMMERCE_ORDERS_TOPIC = "commerce.orders"
COMMERCE_RANK = 3
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("s1", ("order_lines", "intake_entry", "route_shipments")),
    ("s2", ("network", "customers", "route_orders")),
    ("s3", ("arbiter",)),
    ("s4", ("ats", "status")),
    ("s5", ("timers",)),
)


@dataclass(frozen=True)
class Sources:
    """raw(flow) adds the input steps: raw records, progress of their channels, records it could not read."""

    raw: Callable[[Dataflow], Stream[RawRecord | Progress | DeadLetter]]


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
    # current values for stores that lost their data (only when `Topology.reseed` names some)
    reseed: Callable[[str, Stream[Reseed]], None] = lambda step_id, stream: None


def _nowhere(step_id: str, stream: Stream[Emit]) -> None:
    """A store replay does not have; its records still reach the output as topic records."""


def replay_sinks(collect: Callable[[str, Stream[Any]], None]) -> Sinks:
    """Every record to one collector; the stores (Redis, databases) are not written."""
    return Sinks(collect, collect, collect, _nowhere, _nowhere, _nowhere, _nowhere)


@dataclass(frozen=True)
class Topology:
    """What the running dataflow needs beyond the channel definitions."""

    input_channels: Sequence[str]  # every "<topic>#<partition>" the source reads (each sends marks)
    workers: int = 1  # total workers of the dataflow (all processes)
    shards: int = 4  # sequencing shards per stage: fixed for a recovery directory
    grace_ms: int = 100  # how far behind the clock a partition read to its end is promised
    business_zone: str = "UTC"  # dates of channel orders (price validity)
    reseed: frozenset[str] = frozenset()  # stores that lost their data: re-published from the resumed state


# ----------------------------------------------------------------------------- where things go


def _key_of(field: str) -> Callable[[dict[str, Any]], str | None]:
    def key(v: dict[str, Any]) -> str | None:
        value = v.get(field)
        return None if value is None else str(value)
    return key


def _channel_key(v: dict[str, Any]) -> str | None:
    if v.get("channel") is None or v.get("external_order_id") is None:
        return None
    return f"{v['channel']}/{v['external_order_id']}"


def _arbiter_header(v: dict[str, Any]) -> str | None:
    return ARBITER_KEY if v.get("channel") is not None else None


def _arbiter_intake(v: dict[str, Any]) -> str | None:
    return ARBITER_KEY if v.get("status") == "failed" else None


_BY_ORDER = _key_of("order_id")
# canonical topic -> (step, key of a row's fields); a row whose key changes is retracted from the old key
CONSUMERS: dict[str, tuple[tuple[str, Callable[[dict[str, Any]], str | None]], ...]] = {
    ORDER_TOPIC: (("order_lines", _BY_ORDER), ("route_orders", _BY_ORDER), ("intake_entry", _channel_key),
                  ("arbiter", _arbiter_header)),
    ORDER_LINE_TOPIC: (("order_lines", _BY_ORDER), ("route_orders", _BY_ORDER)),
    ALLOCATION_TOPIC: (("order_lines", _BY_ORDER), ("route_orders", _BY_ORDER)),
    INVENTORY_TOPIC: (("network", _key_of("sku")),),
    ITEM_TOPIC: (("network", _key_of("sku")),),
    PRICE_TOPIC: (("network", _key_of("sku")),),
    CUSTOMER_TOPIC: (("customers", _key_of("customer_id")),),
    ORDER_INTAKE_TOPIC: (("intake_entry", _channel_key), ("arbiter", _arbiter_intake)),
    "canonical.shipment": (("route_shipments", _key_of("shipment_id")),),
    "canonical.shipment-line": (("route_shipments", _key_of("shipment_id")),),
    "canonical.return": (("route_orders", _BY_ORDER),),
    "canonical.invoice": (("route_orders", _BY_ORDER),),
    "canonical.credit-memo": (("route_orders", _BY_ORDER),),
}


def route_canonical(item: Any) -> list[Stamped]:
    """A canonical event or channel order -> the stage-1/2 steps that consume it, in its event time."""
    if isinstance(item, ChannelOrder):
        raw = item.raw
        position = f"{raw.partition:06d}/{raw.offset:020d}"
        return [Stamped("intake_entry", item.key, item.time, (COMMERCE_RANK, position), item,
                        tx=("commerce", position))]
    out: list[Stamped] = []
    for step, key_of in CONSUMERS.get(item.topic, ()):
        key = key_of(item.value)
        if item.before is not None:
            old = key_of(item.before)
            if old is not None and old != key:  # the row moved: its old key forgets it, at the same time
                gone = Emit(item.topic, item.key, item.schema, {**item.value, **item.before, "op": "delete"},
                            item.time, item.order, tx=item.tx)
                out.append(Stamped(step, old, item.time, item.order, gone, tx=item.tx))
        if key is not None and not (step == "arbiter" and item.topic == ORDER_TOPIC and item.before is not None):
            out.append(Stamped(step, key, item.time, item.order, item, tx=item.tx))
    return out


class Router:
    """Where each step's outputs go next: (step, key, wake) by their type; none for records that leave."""

    def __init__(self, arbiter: Arbiter, ats: SkuAts) -> None:
        self.arbiter = arbiter
        self.ats_wake = ats.wake_after()

    def __call__(self, o: Any, time: int) -> Iterable[tuple[str, str, int]]:
        if isinstance(o, Commitment | LineCheck):
            return (("network", o.sku, 0),)
        if isinstance(o, NetworkState | Reservation):
            return (("ats", o.sku, time + self.ats_wake if self.ats_wake else 0),)
        if isinstance(o, CustomerCheck):
            return (("customers", o.customer_id, 0),)
        if isinstance(o, LineAnswer | CustomerAnswer):
            return (("arbiter", ARBITER_KEY, 0),)
        if isinstance(o, ToDecide):
            return (("arbiter", ARBITER_KEY, time + self.arbiter.ttl_ms(o.channel)),)
        if isinstance(o, IntakeDecision):
            return (("status", f"{o.channel}/{o.external_order_id}", 0),)
        if isinstance(o, Routed):
            return (("status", o.key, 0),)
        if isinstance(o, Deadline):
            return (("timers", o.bucket, o.wake),)
        if isinstance(o, Emit) and o.topic in SHIPMENT_TOPICS:  # stamped by the shipment router
            order_id = o.value.get("order_id")
            return () if order_id is None else (("route_orders", str(order_id), 0),)
        return ()


# ----------------------------------------------------------------------------- the dataflow


def build_flow(registry: SchemaRegistry, channels: Sequence[Channel], topology: Topology, *, sources: Sources,
               sinks: Sinks, slas: Slas | None = None, canonicalizer: Canonicalizer | None = None) -> Dataflow:
    """The pipeline; `topology.input_channels` must name every channel the source will read."""
    flow = Dataflow("erpsync")
    slas = slas or Slas()
    canonicalizer = canonicalizer or make_canonicalizer(registry)
    by_id = {c.id: c for c in channels}
    zone = ZoneInfo(topology.business_zone)
    reader = PartitionReader(canonicalizer, topology.grace_ms,
                             lambda raw, time: read_channel_order(raw, time, by_id, zone),
                             frozenset({COMMERCE_ORDERS_TOPIC}))
    source = op.branch("readable", sources.raw(flow), lambda x: not isinstance(x, DeadLetter))
    raw: Stream[RawRecord | Progress] = source.trues  # type: ignore[assignment]
    unreadable: Stream[DeadLetter] = source.falses  # type: ignore[assignment]
    _count("input", "dlq", unreadable)
    groups = read_groups(topology.input_channels, topology.shards)
    read_out = read(raw, reader, groups, topology.shards)
    marks: Stream[Mark] = op.filter("read_marks", read_out, lambda o: isinstance(o, Mark))
    consumed = op.filter("to_stages", read_out, lambda o: isinstance(o, ChannelOrder) or (
        isinstance(o, Emit) and o.topic in CONSUMERS))
    stamped: Stream[Any] = op.flat_map("route_canonical", consumed, route_canonical)
    leaving = [op.filter("read_results", read_out, lambda o: not isinstance(o, Mark | ChannelOrder))]

    arbiter = Arbiter(channels)
    ats = SkuAts(channels, slas.unknown_sku_ms)
    route = Router(arbiter, ats)
    reducers: dict[str, Any] = {
        "order_lines": OrderLines(), "intake_entry": IntakeEntry(channels), "route_shipments": ShipmentRouter(),
        "network": SkuNetwork(channels), "customers": CustomerBook(), "route_orders": OrderRouter(),
        "arbiter": arbiter, "ats": ats, "status": StatusBook(set(by_id), slas), "timers": Timers(),
    }
    # every stage waits for the input partitions: merged per read group (flows.canonicalize), not a
    # hundred channels per shard
    upstream: list[str] = sorted(groups)
    all_marks = [marks]
    for stage_id, steps in STAGES:
        items = op.filter(f"{stage_id}_items", stamped, _for_steps(frozenset(steps)))
        stage_marks = op.merge(f"{stage_id}_marks_in", *all_marks)
        outputs, step_marks = stage(stage_id, items, stage_marks, upstream,
                                    {s: StageStep(reducers[s], route) for s in steps},
                                    workers=topology.workers, shards=topology.shards, reseed=topology.reseed)
        upstream = upstream + [f"{s}@{w}" for s in steps for w in range(topology.workers)]
        all_marks.append(step_marks)
        forward = op.branch(f"{stage_id}_forward", outputs, lambda o: isinstance(o, Stamped))
        stamped = op.merge(f"{stage_id}_onward", stamped, forward.trues)
        leaving.append(forward.falses)

    everything = op.branch("is_reseed", op.merge("all_results", *leaving), lambda o: isinstance(o, Reseed))
    sinks.reseed("out_reseed", everything.trues)
    results = everything.falses
    emits_or_not = op.branch("is_emit", results, lambda o: isinstance(o, Emit))
    emits: Stream[Emit] = emits_or_not.trues
    rest = op.branch("is_dead_letter", emits_or_not.falses, lambda o: isinstance(o, DeadLetter))
    dead_letters: Stream[DeadLetter] = op.merge("dead_letters", unreadable, rest.trues)
    ignored: Stream[Ignored] = op.filter("ignored_only", rest.falses,
                                         lambda o: isinstance(o, Ignored))
    # every dead letter is also an exception (replayable, see state.dead_letters)
    dead_letter_exceptions = op.map("dead_letter_exceptions", dead_letters, dead_letter_exception)
    all_emits = op.merge("all_emits", emits, dead_letter_exceptions)
    sinks.emits("out_emits", all_emits)
    exceptions = op.filter("exceptions_only", all_emits, lambda e: e.schema == EXCEPTION_SCHEMA)
    op.flat_map_batch("count_exceptions", exceptions, _count_exceptions)
    sinks.exceptions("out_exceptions", exceptions)
    sinks.availability("out_availability", op.filter(
        "availability_only", emits, lambda e: e.schema == AVAILABILITY_SCHEMA))
    sinks.order_intake("out_order_intake", op.filter(
        "accepted_orders_only", emits, lambda e: e.schema == ACCEPTED_ORDER_SCHEMA))
    sinks.order_status("out_order_status", op.filter(
        "order_status_only", emits, lambda e: e.schema == ORDER_STATUS_SCHEMA))
    sinks.dead_letters("out_dead_letters", dead_letters)
    sinks.ignored("out_ignored", ignored)
    return flow


def _for_steps(steps: frozenset[str]) -> Callable[[Any], bool]:
    def mine(item: Any) -> bool:
        return isinstance(item, Stamped) and item.step in steps
    return mine


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
