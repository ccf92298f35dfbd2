"""Canonical events (+ intake reservations) -> Availability per SKU and channel, and exceptions.

Two keyed steps (see ``state.ats``): order lines by ERP order id (-> commitments, also
used by the orders flow) and the per-SKU ledger, whose held (throttled) updates are released by a
timer. Reservations come from the orders flow's intake desk, which holds the pending intakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.common import reduce
from state.ats import (
    ALLOCATION_TOPIC,
    INVENTORY_TOPIC,
    ITEM_TOPIC,
    ORDER_LINE_TOPIC,
    ORDER_TOPIC,
    Commitment,
    LedgerInput,
    OrderLines,
    Reservation,
    SkuLedger,
    SkuState,
)
from state.channels import Channel
from state.records import Emit
from state.sla import Deadline

_ORDER_FACTS = frozenset({ORDER_TOPIC, ORDER_LINE_TOPIC, ALLOCATION_TOPIC})
_SKU_FACTS = frozenset({INVENTORY_TOPIC, ITEM_TOPIC})


class _LedgerLogic(StatefulBatchLogic[LedgerInput, Emit | Deadline, SkuState]):
    """Runs the pure ledger for one SKU and arms a wall-clock timer for held updates.

    The throttle works in event time (source commit time); live, event time tracks the wall clock,
    so a held update is released that many milliseconds of wall time later. At the end of input
    (replay) everything held is released.
    """

    def __init__(self, ledger: SkuLedger, state: SkuState | None, timers: bool) -> None:
        self.ledger = ledger
        self.state = state or SkuState()
        self.timers = timers
        self.wake: datetime | None = None
        self._arm()  # a state resumed from a snapshot may hold an update that is still due

    def _arm(self) -> None:
        if not self.timers:
            return
        due = self.ledger.due_ms(self.state)
        self.wake = None if due is None else \
            datetime.now(UTC) + timedelta(milliseconds=max(0, due - self.state.event_ms))

    def on_batch(self, values: list[LedgerInput]) -> tuple[Iterable[Emit | Deadline], bool]:
        out: list[Emit | Deadline] = []
        if not self.state.sku:
            self.state.sku = _sku(values[0])
        for value in values:
            self.state, emits = self.ledger.apply(self.state, self.state.sku, value)
            out.extend(emits)
        self._arm()
        return out, StatefulBatchLogic.RETAIN

    def _release(self) -> list[Emit | Deadline]:
        out: list[Emit | Deadline] = []
        while (due := self.ledger.due_ms(self.state)) is not None:
            self.state, emits = self.ledger.flush(self.state, self.state.sku, due)
            out.extend(emits)
            if self.ledger.due_ms(self.state) == due:  # nothing more can be released
                break
        self._arm()
        return out

    def on_notify(self) -> tuple[Iterable[Emit | Deadline], bool]:
        return self._release(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emit | Deadline], bool]:
        return self._release(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> SkuState:
        # bytewax may serialize the snapshot after later items changed the live state: hand it a copy.
        return self.state.copy()


def _order_id(event: Emit) -> str:
    return str(event.value["order_id"])


def _sku(item: LedgerInput) -> str:
    if isinstance(item, Commitment | Reservation):
        return item.sku
    return str(item.value["sku"])


def commitments(canonical: Stream[Emit]) -> Stream[Commitment]:
    """What each open ERP order line still commits, per line, when it changes."""
    order_facts = op.filter("avail_order_facts", canonical, lambda e: e.topic in _ORDER_FACTS)
    order_lines = OrderLines()
    return reduce("avail_order_lines", op.key_on("avail_by_order", order_facts, _order_id), order_lines.apply,
                  lambda st: None if st is None else st.copy())


def availability(canonical: Stream[Emit], committed: Stream[Commitment], reservations: Stream[Reservation] | None,
                 channels: Sequence[Channel], *, live: bool = True,
                 unknown_sku_ms: int = 60_000) -> Stream[Emit | Deadline]:
    """Availability updates and exceptions, from canonical events, commitments and intake reservations.

    Also `unknown_sku` deadlines, for the SLA clock (``flows.orders.sla_clock``).

    live=False (replay): no wall-clock timers; held updates are released by later events and at
    the end of input, in event time only, so two replays of a dump publish the same records.
    """
    sku_facts = op.filter("avail_sku_facts", canonical, lambda e: e.topic in _SKU_FACTS)
    ledger_in: Stream[LedgerInput] = op.merge(
        "avail_ledger_in", sku_facts, committed, *([] if reservations is None else [reservations]))
    ledger = SkuLedger(channels, unknown_sku_ms)
    published = op.stateful_batch(
        "avail_ledger", op.key_on("avail_by_sku", ledger_in, _sku),
        lambda resume: _LedgerLogic(ledger, resume, live))
    return op.key_rm("avail_unkey", published)
