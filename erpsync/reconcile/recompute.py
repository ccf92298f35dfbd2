"""Recomputing the truth: what every channel should have been told, from the source rows alone.

The spec's formulas, written here again on purpose: ATS per SKU and channel (section 5) and the
order status channels should see (section 7). Nothing of the pipeline's code (``state/``) is reused,
so a bug there cannot hide itself. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from erpsync.reconcile.facts import ErpOrder, InventoryFacts
from state.channels import Channel


@dataclass(frozen=True, slots=True)
class Ats:
    """A channel's ATS for a SKU, recomputed, with everything it is made of."""

    ats: int
    status: str  # active | discontinued | absent (from the item master)
    free: int
    on_hand: int
    allocated: int
    in_transit: int
    safety_stock: int
    committed_open: int
    intake_reserved: int
    network: int


def committed_open(facts: InventoryFacts) -> Counter[str]:
    """Per SKU: Σ max(0, qty - WMS allocated) over open lines of entered/released/on_hold/allocated orders."""
    out: Counter[str] = Counter()
    for order_id, line_no, sku, qty in facts.open_lines:
        out[sku] += max(0, qty - facts.wms_allocated.get((order_id, line_no), 0))
    return out


def intake_reserved(facts: InventoryFacts, channels: Sequence[Channel]) -> Counter[str]:
    """Per SKU: lines of pending intakes still within their channel's TTL.

    Intakes of channels not configured here are not counted: the pipeline cannot have accepted them.
    """
    ttl_ms = {c.id: c.intake.intake_ttl_s * 1000 for c in channels}
    out: Counter[str] = Counter()
    for p in facts.pending_intake:
        ttl = ttl_ms.get(p.channel)
        if ttl is not None and facts.now_ms - p.accepted_ms < ttl:
            out[p.sku] += p.qty
    return out


def recompute_ats(facts: InventoryFacts, channels: Sequence[Channel], skus: Iterable[str]) -> dict[
        tuple[str, str], Ats]:
    """(channel, sku) -> ATS by the spec's formula (section 5), for every channel and every SKU given.

    channels must be every configured channel: intakes of any of them reserve stock for all.
    """
    committed, reserved = committed_open(facts), intake_reserved(facts, channels)
    out: dict[tuple[str, str], Ats] = {}
    for sku in sorted(set(skus)):
        safety, status = facts.items.get(sku, (0, "absent"))
        stock = facts.balances.get(sku, {})
        for c in channels:
            seen = [v for loc, v in stock.items() if c.sees(loc)]
            free = sum(max(0, oh - al) + (tr if c.include_in_transit else 0) for oh, al, tr in seen)
            network = free - safety - committed[sku] - reserved[sku]
            share = c.share_exact
            ats = max(0, network * share.numerator // share.denominator) if status == "active" else 0
            out[(c.id, sku)] = Ats(ats, status, free, sum(v[0] for v in seen), sum(v[1] for v in seen),
                                   sum(v[2] for v in seen), safety, committed[sku], reserved[sku], network)
    return out


RECEIVED: dict[str, Any] = {"status": "received", "order_id": None, "lines": [], "carriers": [], "tracking_numbers": []}


def expected_status(order: ErpOrder) -> dict[str, Any]:
    """The status channels should see (spec section 7: the first that holds wins) and its lines."""
    lines, allocated, shipped = order.live_lines(), order.allocated(), order.shipped()
    if order.status in ("cancelled", "closed"):
        status = order.status
    elif order.invoices:
        status = "invoiced"
    elif lines and all(shipped[n] >= ln.qty for n, ln in lines.items()):
        status = "shipped"
    elif any(shipped[n] > 0 for n in lines):
        status = "partially_shipped"
    elif lines and all(allocated[n] >= ln.qty for n, ln in lines.items()):
        status = "allocated"
    elif order.status == "on_hold":
        status = "on_hold"
    else:
        status = "accepted"
    return {
        "status": status, "order_id": order.order_id,
        "lines": [{"line_no": n, "sku": ln.sku, "ordered": ln.qty, "allocated": allocated[n], "shipped": shipped[n]}
                  for n, ln in sorted(lines.items())],
        "carriers": sorted({s.carrier for s in order.shipments.values() if s.carrier}),
        "tracking_numbers": sorted({s.tracking_no for s in order.shipments.values() if s.tracking_no}),
    }
