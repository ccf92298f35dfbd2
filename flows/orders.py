"""Channel orders and canonical events -> governed intake, order status per channel, SLA exceptions.

Steps (pure reducers from ``state``, keyed as they need):
- ``orders_network`` (by SKU): stock, item master and commitments -> each SKU's network per channel
  before intake reservations (``SkuNetwork``).
- ``orders_intake`` (one key): channel orders validated against customers, items, prices and that
  network minus the desk's own pending reservations -> accepted orders (``erp.order-intake``),
  reservations (to the availability ledger), decisions (to the status book), rejection exceptions.
- ``orders_route_shipments`` (by shipment id) and ``orders_route`` (by ERP order id): bring every
  ERP/WMS fact to its order's channel key.
- ``orders_status`` (by "<channel>/<external order id>"): ``OrderStatus`` per channel when a
  channel-visible field changed, discrepancy exceptions, SLA deadlines.
- ``sla`` (one key, ``sla_clock``, wired by the pipeline with the availability flow's deadlines
  too): deadlines against event time -> SLA exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.common import Ticker, reduce
from state import Tick
from state.ats import (
    ALLOCATION_TOPIC,
    INVENTORY_TOPIC,
    ITEM_TOPIC,
    ORDER_INTAKE_TOPIC,
    ORDER_LINE_TOPIC,
    ORDER_TOPIC,
    Commitment,
    Reservation,
    SkuNetwork,
)
from state.channels import Channel
from state.intake import CUSTOMER_TOPIC, PRICE_TOPIC, DeskInput, DeskOutput, DeskState, IntakeDesk
from state.order_status import (
    KEYED_FACT_TOPICS,
    ORDER_FACT_TOPICS,
    SHIPMENT_TOPICS,
    BookState,
    IdRouter,
    IntakeDecision,
    OrderRouter,
    RouteState,
    ShipmentRouter,
    StatusBook,
)
from state.records import DeadLetter, Emit, Ignored, RawRecord
from state.sla import Deadline, Deadlines, DeadlineState, Slas

COMMERCE_ORDERS_TOPIC = "commerce.orders"
_DESK_FACTS = frozenset({CUSTOMER_TOPIC, ITEM_TOPIC, PRICE_TOPIC, ORDER_TOPIC, ORDER_INTAKE_TOPIC})
# What validation reads (directly, or through the network and commitments): an order waits for the
# event time of these tables only. Not the ERP intake table, which echoes the desk's own output.
VALIDATION_TOPICS = frozenset({CUSTOMER_TOPIC, ITEM_TOPIC, PRICE_TOPIC, INVENTORY_TOPIC, ORDER_TOPIC,
                               ORDER_LINE_TOPIC, ALLOCATION_TOPIC})


class _ClockLogic(StatefulBatchLogic[Deadline | Tick, Emit, DeadlineState]):
    """The SLA clock, plus the wall-clock test for idle input streams (live; see ``Deadlines``)."""

    def __init__(self, clock: Deadlines, resume: DeadlineState | None, live: bool, hold_ms: int) -> None:
        self.clock = clock
        self.state = resume or DeadlineState()
        self.live = live
        self.hold = timedelta(milliseconds=hold_ms)
        now = datetime.now(UTC)
        self.last_tick = {stream: now for stream in self.state.watermarks}  # a (re)start is not idle

    def _quiet(self, now: datetime) -> frozenset[str]:
        return frozenset(s for s in self.state.watermarks if now - self.last_tick.get(s, now) >= self.hold)

    def on_batch(self, values: list[Deadline | Tick]) -> tuple[Iterable[Emit], bool]:
        out: list[Emit] = []
        now = datetime.now(UTC)
        for value in values:
            self.state, outs = self.clock.apply(self.state, value)
            out.extend(outs)
            if isinstance(value, Tick):
                self.last_tick[value.stream] = now
        if self.live:
            out.extend(self.clock.advance(self.state, self._quiet(now)))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Emit], bool]:
        return self.clock.advance(self.state, self._quiet(datetime.now(UTC))), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emit], bool]:
        return self.clock.advance(self.state, None), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # live: look again while deadlines are armed (idle streams stop holding the clock back)
        return datetime.now(UTC) + self.hold if self.live and self.state.armed else None

    def snapshot(self) -> DeadlineState:
        return self.state.copy()


def sla_clock(deadlines: Stream[Deadline], ticks: Stream[Tick], *, live: bool = True,
              hold_ms: int = 1000) -> Stream[Emit]:
    """The SLA clock: deadlines of every flow against event time -> their exceptions when due."""
    clock = Deadlines(quiet_ms=None if live else hold_ms)
    sla_in = op.key_on("sla_one_clock", op.merge("sla_in", deadlines, ticks), lambda _: "sla")
    return op.key_rm("sla_unkey", op.stateful_batch("sla", sla_in, lambda resume: _ClockLogic(clock, resume, live,
                                                                                               hold_ms)))


@dataclass(frozen=True)
class OrdersOut:
    emits: Stream[Emit]  # accepted orders, order statuses, exceptions
    deadlines: Stream[Deadline]  # SLA deadlines armed/disarmed (for sla_clock)
    ticks: Stream[Tick]  # source event time
    reservations: Stream[Reservation]  # for the availability ledger
    dead_letters: Stream[DeadLetter]
    ignored: Stream[Ignored]


def _sku(event: Emit | Commitment) -> str:
    return event.sku if isinstance(event, Commitment) else str(event.value["sku"])


def _copy_route(state: RouteState | None) -> RouteState | None:
    return None if state is None else RouteState(state.target, list(state.waiting))


def _copy(state: Any) -> Any:
    return None if state is None else state.copy()


class _DeskLogic(StatefulBatchLogic[DeskInput, DeskOutput, DeskState]):
    """The intake desk, plus the wall-clock test for quiet input streams (live only).

    An order waits for every input stream's event time to reach it (see ``state.intake``).
    A stream (raw topic partition) that sent no tick for `hold_ms` of wall time is quiet (idle, not
    lagging: a backlogged partition delivers at every poll): orders stop waiting for it. Replay has
    no wall clock; the desk judges quietness in event time there.
    """

    def __init__(self, desk: IntakeDesk, resume: DeskState | None, live: bool, hold_ms: int,
                 streams: Sequence[str]) -> None:
        self.desk = desk
        self.state = resume or DeskState()
        self.live = live
        self.hold = timedelta(milliseconds=hold_ms)
        for stream in streams:  # inputs not heard from yet are waited for too, until they prove quiet
            self.state.watermarks.setdefault(stream, -1)
        now = datetime.now(UTC)
        self.last_tick = {stream: now for stream in self.state.watermarks}  # a (re)start is not quiet
        self.wake: datetime | None = None
        self._arm()

    def _arm(self) -> None:
        if not self.live or not self.state.waiting:
            self.wake = None
            return
        now = datetime.now(UTC)
        soonest = min((t + self.hold for t in self.last_tick.values()), default=now)
        self.wake = soonest if soonest > now else now + self.hold

    def on_batch(self, values: list[DeskInput]) -> tuple[Iterable[DeskOutput], bool]:
        out: list[DeskOutput] = []
        now = datetime.now(UTC)
        for value in values:
            self.state, outs = self.desk.apply(self.state, value)
            out.extend(outs)
            if isinstance(value, Tick) and value.stream:
                self.last_tick[value.stream] = now
        if self.live and self.state.waiting:  # streams idle for a while already need not be waited for
            out.extend(self.desk.release(self.state, self._quiet(now)))
        self._arm()
        return out, StatefulBatchLogic.RETAIN

    def _quiet(self, now: datetime) -> frozenset[str]:
        return frozenset(s for s in self.state.watermarks if now - self.last_tick.get(s, now) >= self.hold)

    def on_notify(self) -> tuple[Iterable[DeskOutput], bool]:
        out = self.desk.release(self.state, self._quiet(datetime.now(UTC)))
        self._arm()
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[DeskOutput], bool]:
        return self.desk.release(self.state), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> DeskState:
        return self.state.copy()


def orders(canonical: Stream[Emit], commitments: Stream[Commitment], channel_orders: Stream[RawRecord],
           channels: Sequence[Channel], slas: Slas, *, live: bool = True, hold_ms: int = 1000,
           streams: Sequence[str] = ()) -> OrdersOut:
    """The orders dataflow; `commitments` come from the availability flow's order lines step.

    live=False (replay): orders held for source time are decided at the end of input, not by a
    wall-clock timer (see ``_DeskLogic``). `streams` ("<raw topic>#<partition>") are the inputs a
    live pipeline reads: at a fresh start, orders wait for them before any has delivered a record.
    """
    network = SkuNetwork(channels)
    sku_facts = op.filter("orders_sku_facts", canonical, lambda e: e.topic in (INVENTORY_TOPIC, ITEM_TOPIC))
    net_in = op.key_on("orders_by_sku", op.merge("orders_network_in", sku_facts, commitments), _sku)
    changes = reduce("orders_network", net_in, lambda st, e: network.apply(st, _sku(e), e), _copy)

    desk = IntakeDesk(channels, tick_ms=100, quiet_ms=None if live else hold_ms)
    ticks = op.filter_map("orders_ticks", canonical, Ticker(desk.tick_ms))  # event time, 100 ms resolution
    validation_facts = op.filter("orders_validation_facts", canonical, lambda e: e.topic in VALIDATION_TOPICS)
    desk_ticks = op.filter_map("orders_desk_ticks", validation_facts, Ticker(desk.tick_ms))
    desk_facts = op.filter("orders_desk_facts", canonical, lambda e: e.topic in _DESK_FACTS)
    desk_in: Stream[DeskInput] = op.merge("orders_desk_in", channel_orders, desk_facts, changes, desk_ticks)
    desk_out: Stream[Any] = op.key_rm("orders_intake_unkey", op.stateful_batch(
        "orders_intake", op.key_on("orders_one_desk", desk_in, lambda _: "intake"),
        lambda resume: _DeskLogic(desk, resume, live, hold_ms, streams)))
    is_reservation = op.branch("orders_is_reservation", desk_out, lambda o: isinstance(o, Reservation))
    is_decision = op.branch("orders_is_decision", is_reservation.falses, lambda o: isinstance(o, IntakeDecision))
    is_emit = op.branch("orders_is_emit", is_decision.falses, lambda o: isinstance(o, Emit))
    is_dead = op.branch("orders_is_dead_letter", is_emit.falses, lambda o: isinstance(o, DeadLetter))

    shipment_facts = op.filter("orders_shipment_facts", canonical, lambda e: e.topic in SHIPMENT_TOPICS)
    shipments = ShipmentRouter()
    stamped = reduce("orders_route_shipments",
                     op.key_on("orders_by_shipment", shipment_facts, lambda e: str(e.value["shipment_id"])),
                     shipments.apply, _copy_route)
    keyed_facts = op.filter("orders_keyed_facts", canonical, lambda e: e.topic in KEYED_FACT_TOPICS)
    ids = IdRouter()
    with_order = reduce("orders_route_ids", op.key_on(
        "orders_by_row_id", keyed_facts, lambda e: f"{e.topic}|{e.value[KEYED_FACT_TOPICS[e.topic]]}"),
        ids.apply, _copy_route)
    order_facts = op.filter("orders_order_facts", canonical, lambda e: e.topic in ORDER_FACT_TOPICS)
    router = OrderRouter()
    facts = op.filter("orders_facts_with_order", op.merge("orders_facts", order_facts, stamped, with_order),
                      lambda e: e.value.get("order_id") is not None)  # (a key-only delete of an unknown row)
    routed = reduce("orders_route", op.key_on("orders_by_order_id", facts, lambda e: str(e.value["order_id"])),
                    router.apply, _copy_route)
    decisions = op.map("orders_decision_key", is_decision.trues,
                       lambda d: (f"{d.channel}/{d.external_order_id}", d))
    book = StatusBook({c.id for c in channels}, slas)
    book_in = op.key_on("orders_by_channel_order", op.merge("orders_book_in", routed, decisions), lambda t: t[0])
    book_out = reduce("orders_status", book_in, lambda st, t: book.apply(st, t[0], t[1]),
                      lambda st: None if st is None else BookState.copy(st), book.flush)
    is_deadline = op.branch("orders_is_deadline", book_out, lambda o: isinstance(o, Deadline))

    return OrdersOut(
        emits=op.merge("orders_emits", is_emit.trues, is_deadline.falses),
        deadlines=is_deadline.trues,
        ticks=ticks,
        reservations=is_reservation.trues,
        dead_letters=is_dead.trues,
        ignored=is_dead.falses,
    )
