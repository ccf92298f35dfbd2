"""Property: whatever the interleaving, duplicates and redeliveries, the final published ATS equals
the spec formula evaluated directly on the final source rows (an independent implementation)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erpsync.channels import load_channels
from state import Tick
from state.ats import (
    AVAILABILITY_SCHEMA,
    Commitment,
    IntakeAccepted,
    OrderLines,
    Reservation,
    Reservations,
    SkuLedger,
)
from state.channels import Channel
from state.records import Emit

CHANNELS = load_channels()
SKUS = ["S1", "S2", "S3"]
LOCATIONS = ["DC-EAST", "DC-WEST", "DC-CENTRAL"]
ORDERS = [1, 2, 3]


@dataclass
class World:
    """The final source rows, as the ERP/WMS/channels hold them (the test's own model)."""

    balances: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    items: dict[str, tuple[int, str]] = field(default_factory=dict)
    orders: dict[int, tuple[str, str]] = field(default_factory=dict)  # status, ext id
    lines: dict[tuple[int, int], tuple[str, int, str]] = field(default_factory=dict)
    allocations: dict[int, tuple[int, int, int, str]] = field(default_factory=dict)  # order, line, qty, status
    intakes: dict[str, tuple[int, list[tuple[int, str, int]]]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    now_ms: int = 0


def expected_ats(w: World, channel: Channel, sku: str) -> int:
    """Spec section 5, written independently of state.ats."""
    item = w.items.get(sku)
    if item is None or item[1] != "active":
        return 0
    free = sum(max(0, oh - al) + (tr if channel.include_in_transit else 0)
               for (s, loc), (oh, al, tr) in w.balances.items()
               if s == sku and (channel.locations is None or loc in channel.locations))
    committed = 0
    for (order_id, line_no), (line_sku, qty, status) in w.lines.items():
        header = w.orders.get(order_id)
        if line_sku == sku and status == "open" and header and header[0] in {"entered", "released", "on_hold",
                                                                              "allocated"}:
            allocated = sum(q for o, ln, q, s in w.allocations.values() if (o, ln) == (order_id, line_no)
                            and s != "cancelled")
            committed += max(0, qty - allocated)
    ttl = {c.id: c.intake.intake_ttl_s * 1000 for c in CHANNELS}
    reserved = sum(q for key, (acc, lines) in w.intakes.items()
                   if key not in w.settled and acc + ttl[key.split("/")[0]] > w.now_ms - w.now_ms % 1000
                   for _, s, q in lines if s == sku)
    network = free - item[0] - committed - reserved
    share = Fraction(str(channel.share))
    return max(0, int(network * share // 1))


def canonical(topic: str, key: list[Any], value: dict[str, Any], system: str, pos: int, ts: int,
              delete: bool = False) -> Emit:
    position = f"{pos:016x}/{pos:016x}" if system == "erp" else f"000001/{pos:012d}/000000"
    return Emit(topic, json.dumps(key), "x", {**value, "op": "delete" if delete else "upsert",
                                                  "source": {"system": system, "position": position,
                                                             "commit_ts_ms": ts}})


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Any], World]:
    """A random history of source changes -> (events as the pipeline receives them, final world)."""
    w = World()
    events: list[Any] = []
    pos = itertools.count(1)
    ts = 1_000_000
    for _ in range(draw(st.integers(1, 40))):
        ts += draw(st.integers(0, 400_000))
        w.now_ms = max(w.now_ms, ts)
        kind = draw(st.sampled_from(["balance", "balance", "item", "order", "line", "alloc", "intake", "fail"]))
        if kind == "balance":
            sku, loc = draw(st.sampled_from(SKUS)), draw(st.sampled_from(LOCATIONS))
            if draw(st.booleans()) or (sku, loc) not in w.balances:
                row = (draw(st.integers(0, 50)), draw(st.integers(0, 20)), draw(st.integers(0, 10)))
                w.balances[(sku, loc)] = row
                events.append(canonical("canonical.inventory-position", [sku, loc], {
                    "sku": sku, "location": loc, "on_hand": row[0], "allocated": row[1], "in_transit": row[2]},
                    "wms", next(pos), ts))
            else:
                del w.balances[(sku, loc)]
                events.append(canonical("canonical.inventory-position", [sku, loc], {"sku": sku, "location": loc},
                                        "wms", next(pos), ts, delete=True))
        elif kind == "item":
            sku = draw(st.sampled_from(SKUS))
            item = (draw(st.integers(0, 5)), draw(st.sampled_from(["active", "active", "discontinued"])))
            if draw(st.integers(0, 5)) == 0:
                w.items.pop(sku, None)
                events.append(canonical("canonical.item", [sku], {"sku": sku}, "erp", next(pos), ts, delete=True))
            else:
                w.items[sku] = item
                events.append(canonical("canonical.item", [sku], {"sku": sku, "safety_stock": item[0],
                                                                 "status": item[1]}, "erp", next(pos), ts))
        elif kind == "order":
            order_id = draw(st.sampled_from(ORDERS))
            status = draw(st.sampled_from(["entered", "released", "on_hold", "allocated", "shipped", "cancelled"]))
            channel = draw(st.sampled_from([c.id for c in CHANNELS]))
            ext = f"X{order_id}"
            w.orders[order_id] = (status, ext)
            w.settled.add(f"{channel}/{ext}")
            events.append(canonical("canonical.order", [order_id], {
                "order_id": order_id, "status": status, "channel": channel, "external_order_id": ext},
                "erp", next(pos), ts))
        elif kind == "line":
            key = (draw(st.sampled_from(ORDERS)), draw(st.integers(1, 2)))
            line = (draw(st.sampled_from(SKUS)), draw(st.integers(1, 9)), draw(st.sampled_from(["open", "open",
                                                                                                  "cancelled"])))
            w.lines[key] = line
            events.append(canonical("canonical.order-line", list(key), {
                "order_id": key[0], "line_no": key[1], "sku": line[0], "qty": line[1], "status": line[2]},
                "erp", next(pos), ts))
        elif kind == "alloc":
            alloc_id = draw(st.integers(1, 4))
            row = (draw(st.sampled_from(ORDERS)), draw(st.integers(1, 2)), draw(st.integers(0, 6)),
                   draw(st.sampled_from(["allocated", "picked", "cancelled"])))
            old = w.allocations.get(alloc_id)
            if old is not None and old[0] != row[0]:
                row = (old[0], *row[1:])  # an allocation stays with its order
            w.allocations[alloc_id] = row
            events.append(canonical("canonical.allocation", [alloc_id], {
                "allocation_id": alloc_id, "order_id": row[0], "line_no": row[1], "qty": row[2], "status": row[3]},
                "wms", next(pos), ts))
        elif kind == "intake":
            channel = draw(st.sampled_from([c.id for c in CHANNELS]))
            key = f"{channel}/I{next(pos)}"
            lines = [(n, draw(st.sampled_from(SKUS)), draw(st.integers(1, 5)))
                     for n in range(1, draw(st.integers(1, 3)))]
            w.intakes[key] = (ts, lines)
            events.append(IntakeAccepted({"channel": channel, "external_order_id": key.split("/")[1],
                                          "lines": [{"line_no": n, "sku": s, "qty": q} for n, s, q in lines]},
                                         f"{next(pos):012d}", ts))
        elif kind == "fail" and w.intakes:
            key = draw(st.sampled_from(sorted(w.intakes)))
            channel, ext = key.split("/")
            w.settled.add(key)
            events.append(canonical("canonical.order-intake", [channel, ext], {
                "channel": channel, "external_order_id": ext, "status": "failed"}, "erp", next(pos), ts))
        # redelivery: an earlier event again (a connector or pipeline restart)
        if events and draw(st.integers(0, 4)) == 0:
            events.append(draw(st.sampled_from(events)))
    return events, w


def run_pipeline(events: list[Any]) -> dict[tuple[str, str], int]:
    """Route events as the dataflow does (order id / one key / SKU), flush at the end of input."""
    lines, reservations, ledger = OrderLines(), Reservations(CHANNELS), SkuLedger(CHANNELS)
    order_states: dict[str, Any] = {}
    intake_state = None
    sku_states: dict[str, Any] = {}
    published: dict[tuple[str, str], int] = {}

    def to_ledger(item: Any) -> None:
        sku = item.sku if isinstance(item, Commitment | Reservation) else item.value["sku"]
        sku_states[sku], out = ledger.apply(sku_states.get(sku), sku, item)
        record(out)

    def record(out: list[Emit]) -> None:
        for e in out:
            if isinstance(e, Emit) and e.schema == AVAILABILITY_SCHEMA:
                published[(e.value["channel"], e.value["sku"])] = e.value["ats"]

    for event in events:
        if isinstance(event, Emit) and event.topic in ("canonical.order", "canonical.order-line",
                                                         "canonical.allocation"):
            oid = str(event.value["order_id"])
            order_states[oid], commitments = lines.apply(order_states.get(oid), event)
            for c in commitments:
                to_ledger(c)
        if isinstance(event, Emit):  # every source event moves event time forward for the TTLs
            intake_state, outs = reservations.apply(intake_state, Tick(event.value["source"]["commit_ts_ms"]))
            for r in outs:
                if isinstance(r, Reservation):
                    to_ledger(r)
        if isinstance(event, IntakeAccepted) or event.topic in ("canonical.order", "canonical.order-intake"):
            intake_state, outs = reservations.apply(intake_state, event)
            for r in outs:
                if isinstance(r, Reservation):
                    to_ledger(r)
        if isinstance(event, Emit) and event.topic in ("canonical.inventory-position", "canonical.item"):
            to_ledger(event)
    for sku, state in sku_states.items():
        while (due := ledger.due_ms(state)) is not None:
            state, out = ledger.flush(state, sku, due)
            record(out)
    return published


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_final_ats_equals_the_formula_on_final_rows(history: tuple[list[Any], World]) -> None:
    events, world = history
    published = run_pipeline(events)
    for channel in CHANNELS:
        for sku in SKUS:
            expected = expected_ats(world, channel, sku)
            got = published.get((channel.id, sku), 0)  # never published: unknown, reads as 0
            assert got == expected, (channel.id, sku)


def test_a_resumed_state_holding_an_update_arms_its_timer() -> None:
    from flows.availability import _LedgerLogic  # noqa: PLC0415

    ledger = SkuLedger(CHANNELS)
    item = canonical("canonical.item", ["S1"], {"sku": "S1", "safety_stock": 0, "status": "active"}, "erp", 1, 1000)
    stock = [canonical("canonical.inventory-position", ["S1", "DC-EAST"], {
        "sku": "S1", "location": "DC-EAST", "on_hand": n, "allocated": 0, "in_transit": 0}, "wms", 1 + n, 1000 + n)
        for n in (10, 11)]
    state = None
    for event in (item, *stock):
        state, _ = ledger.apply(state, "S1", event)
    assert state is not None and ledger.due_ms(state) == 1250  # 11 is held behind the 10 just published
    resumed = _LedgerLogic(ledger, state, timers=True)
    assert resumed.notify_at() is not None
    assert _LedgerLogic(ledger, state, timers=False).notify_at() is None


def test_a_state_copy_is_independent() -> None:
    ledger = SkuLedger(CHANNELS)
    state, _ = ledger.apply(None, "S1", canonical("canonical.inventory-position", ["S1", "DC-EAST"], {
        "sku": "S1", "location": "DC-EAST", "on_hand": 5, "allocated": 0, "in_transit": 0}, "wms", 1, 1000))
    snapshot = state.copy()
    ledger.apply(state, "S1", canonical("canonical.inventory-position", ["S1", "DC-WEST"], {
        "sku": "S1", "location": "DC-WEST", "on_hand": 7, "allocated": 0, "in_transit": 0}, "wms", 2, 1001))
    ledger.apply(state, "S1", Commitment("S1", "1/1", 2, 1, "erp", "0001", 1002))
    assert sorted(snapshot.stock) == ["DC-EAST"] and snapshot.commitments is None
    assert snapshot.positions[0] == "" and state.positions[0] == "0001"  # the ERP position came later
    assert snapshot.version == 1 and state.version == 3
