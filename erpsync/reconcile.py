"""``erpsync reconcile``: the systems of record against what channels were told (spec section 9).

Reads the ERP and the WMS directly (SQL, each in one read-only snapshot), recomputes what every
channel should have been told with the spec's formulas, written here again on purpose (nothing of
the pipeline's code is reused, so a bug there cannot hide itself), and compares:

- inventory: ATS per SKU and channel (spec section 5) against Redis ``HGET ats:<channel> <sku>``
  (what storefronts read) and ``sync.availability`` in the operations database;
- orders: status and per-line quantities (spec section 7) against ``sync.order_status``, plus
  the discrepancies the ERP and WMS rows show by themselves (invoice, freight, credit, short or
  over shipment, ERP/WMS status disagreement), so every injected fault is named even if the
  pipeline missed it.

The compacted ``availability.<channel>`` and ``order-status.<channel>`` topics are compared only
with ``--topics``, and then only over the last N records of each topic: on a long-lived stack they
hold millions of records, and the ops database row is written by the same pipeline under the same
fence as the topic record, so the ops database comparison already covers what was published.

Layout: pure comparison and KPI logic first (unit-tested without services), then the reads, the
orchestration (``reconcile``), the report (``render``, ``Report.to_json``) and the command.
Every run and its findings are stored in ``sync.reconciliation_runs`` / ``_findings``.

Reading while the pipeline is busy reports in-flight updates as differences (the sources are read
before what was published); reconcile a quiet system, or read repeated findings across runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import re
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pymysql
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from connectors import ops_db
from connectors.redis import client as redis_client
from erpsync.channels import configured_channels
from erpsync.settings import Settings
from state.channels import Channel

log = logging.getLogger(__name__)

COMMITTING_ORDER_STATUSES = frozenset({"entered", "released", "on_hold", "allocated"})
DISPATCHED = frozenset({"dispatched", "delivered"})
ERP_SHIPPED = frozenset({"shipped", "invoiced", "closed"})
CENT = Decimal("0.01")
STATUS_FIELDS = ("status", "order_id", "lines", "carriers", "tracking_numbers")

ACCURACY_DEFINITION = (
    "inventory accuracy = SKU x channel pairs (channels that publish to Redis; SKUs in the ERP item master, "
    "WMS stock, open ERP order lines, pending intakes, Redis or sync.availability) whose Redis value, an "
    "absent value read as 0 as storefronts do, equals the ATS recomputed from the ERP and WMS / all such pairs"
)
KIND_HELP = {
    "ats_mismatch_redis": "Redis ats:<channel> differs from the ATS recomputed from the sources",
    "missing_in_redis": "a SKU of the item master or WMS stock has no value in Redis ats:<channel>",
    "ats_mismatch_ops_db": "sync.availability.ats differs from the recomputed ATS",
    "missing_in_ops_db": "a SKU of the item master or WMS stock has no sync.availability row",
    "ats_mismatch_topic": "the latest availability.<channel> record differs from the recomputed ATS",
    "order_status_mismatch": "sync.order_status differs from the status/lines recomputed from ERP and WMS",
    "order_status_mismatch_topic": "the latest order-status.<channel> record differs from the recomputed one",
    "missing_order_status": "an ERP order of a configured channel has no sync.order_status row",
    "order_missing_in_erp": "channels were told an order was accepted, but neither erp.order_intake nor "
                            "erp.sales_orders has it",
    "invoice_discrepancy": "the order's invoices do not add up to the order total",
    "freight_discrepancy": "invoiced freight differs from the WMS shipments' freight cost",
    "credit_discrepancy": "credit memo amount for a return differs from returned qty x line unit price",
    "credit_pending": "a WMS return has no credit memo (yet)",
    "short_shipment": "the ERP says shipped/invoiced/closed but the WMS dispatched less than ordered "
                      "(the spec's status_mismatch)",
    "overship": "the WMS dispatched more than ordered on a line",
    "status_mismatch": "the ERP and the WMS disagree about the order otherwise",
    "channel_mismatch": "the ATS a push channel last acknowledged differs from the recomputed ATS "
                        "(absent: never acknowledged, read as 0)",
}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference. expected: what the systems of record say; actual: what was told (or the other side)."""

    kind: str
    entity: str  # "availability" or "order"
    business_key: str  # "<channel>/<sku>" or "<channel>/<external_order_id>", as sync.exceptions keys them
    expected: Any
    actual: Any
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Latency:
    """Source commit -> sink write, in ms, over the rows sampled (nearest-rank percentiles)."""

    count: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Kpis:
    inventory_pairs: int
    inventory_accurate: int
    inventory_accuracy_pct: float | None  # None: no pair in scope
    orders: int
    orders_with_exceptions: int
    order_exception_rate_pct: float | None
    invoices: int
    invoices_with_discrepancy: int
    invoice_discrepancy_rate_pct: float | None
    sync_latency_ms: dict[str, Latency]  # "availability", "order_status", "all"
    open_exceptions_by_kind: dict[str, int] | None  # None: the ops database has no sync.exceptions yet


@dataclass
class Report:
    scope: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    kpis: Kpis
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    min_accuracy_pct: float | None = None
    run_id: int | None = None

    @property
    def passed(self) -> bool:
        """Inventory accuracy meets the threshold (always, when none was given)."""
        return meets(self.kpis.inventory_accurate, self.kpis.inventory_pairs, self.min_accuracy_pct)

    def by_kind(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            out[f.kind].append(f)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "scope": self.scope,
            "started_at": self.started_at.isoformat(), "finished_at": self.finished_at.isoformat(),
            "kpis": asdict(self.kpis), "accuracy_definition": ACCURACY_DEFINITION,
            "min_accuracy_pct": self.min_accuracy_pct, "passed": self.passed,
            "findings_by_kind": {k: len(v) for k, v in self.by_kind().items()},
            "findings": [asdict(f) for f in self.findings], "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# ----------------------------------------------------------------------------- pure: patterns and KPIs


def like_regex(pattern: str | None) -> re.Pattern[str]:
    """A regex matching exactly what SQL ``LIKE pattern`` matches (backslash escapes; None: everything)."""
    if pattern is None:
        return re.compile(r".*", re.DOTALL)
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def like_glob(pattern: str | None) -> str:
    """The Redis glob (HSCAN MATCH) equivalent of SQL ``LIKE pattern``."""
    if pattern is None:
        return "*"
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, "\\")
            out.append("\\" + ch if ch in "*?[]\\" else ch)
        elif ch in "%_":
            out.append("*" if ch == "%" else "?")
        else:
            out.append("\\" + ch if ch in "*?[]\\" else ch)
    return "".join(out)


def percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100 * part / whole, 4)


def meets(accurate: int, pairs: int, min_pct: float | None) -> bool:
    """accurate/pairs >= min_pct percent, exactly; with a threshold, no pair at all fails (a typo'd scope)."""
    if min_pct is None:
        return True
    return pairs > 0 and Fraction(accurate * 100, pairs) >= Fraction(str(min_pct))


# ----------------------------------------------------------------------------- pure: inventory


@dataclass(frozen=True, slots=True)
class PendingIntake:
    """One line of an erp.order_intake row that is pending and not (yet) in erp.sales_orders."""

    channel: str
    external_order_id: str
    sku: str
    qty: int
    accepted_ms: int  # payload.accepted_at_ms: when intake governance accepted it (the TTL starts there)


@dataclass
class InventoryFacts:
    """The source rows the ATS formula needs, for the SKUs in scope."""

    items: dict[str, tuple[int, str]] = field(default_factory=dict)  # sku -> (safety_stock, status)
    # sku -> location -> (on_hand, allocated, in_transit)
    balances: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    # open lines of orders in a committing status: (order_id, line_no, sku, qty)
    open_lines: list[tuple[int, int, str, int]] = field(default_factory=list)
    wms_allocated: dict[tuple[int, int], int] = field(default_factory=dict)  # Σ allocations.qty not cancelled
    pending_intake: list[PendingIntake] = field(default_factory=list)
    now_ms: int = 0  # the ERP's clock when it was read: intake TTLs are measured against it

    def skus(self) -> set[str]:
        return (set(self.items) | set(self.balances) | {sku for _, _, sku, _ in self.open_lines}
                | {p.sku for p in self.pending_intake})

    def known(self) -> set[str]:
        """SKUs the item master or the WMS stock has: the pipeline must have published them."""
        return set(self.items) | set(self.balances)


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


@dataclass(frozen=True)
class InventoryResult:
    findings: list[Finding]
    pairs: int  # SKU x channel pairs counted for accuracy
    accurate: int


def compare_inventory(expected: Mapping[tuple[str, str], Ats], redis_values: Mapping[str, Mapping[str, str]],
                      ops_rows: Mapping[tuple[str, str], Mapping[str, Any]], known: set[str],
                      redis_channels: set[str]) -> InventoryResult:
    """Recomputed ATS against Redis (channel -> sku -> raw value) and sync.availability rows.

    Accuracy counts only channels in redis_channels (those whose outputs include Redis); see
    ACCURACY_DEFINITION. A known SKU absent from Redis is a finding even when reading 0 is right.
    """
    findings: list[Finding] = []
    pairs = accurate = 0
    for (channel, sku), exp in sorted(expected.items()):
        key = f"{channel}/{sku}"
        row = ops_rows.get((channel, sku))
        detail = {"recomputed": asdict(exp), "ops_db": None if row is None else dict(row)}
        if channel in redis_channels:
            pairs += 1
            raw = redis_values.get(channel, {}).get(sku)
            told: int | str | None = None if raw is None else _int_or_raw(raw)
            if (0 if told is None else told) == exp.ats:
                accurate += 1
            if told is None and sku in known:
                findings.append(Finding("missing_in_redis", "availability", key, exp.ats, None, detail))
            elif told is not None and told != exp.ats:
                findings.append(Finding("ats_mismatch_redis", "availability", key, exp.ats, told, detail))
        if row is None:
            if sku in known:
                findings.append(Finding("missing_in_ops_db", "availability", key, exp.ats, None, detail))
        elif row["ats"] != exp.ats:
            findings.append(Finding("ats_mismatch_ops_db", "availability", key, exp.ats, row["ats"], detail))
    return InventoryResult(findings, pairs, accurate)


def compare_push(expected: Mapping[tuple[str, str], Ats], acked: Mapping[tuple[str, str], int],
                 push_channels: set[str]) -> list[Finding]:
    """channel_mismatch: what each push channel last acknowledged (sync.channel_deliveries) vs the recomputed ATS."""
    findings = []
    for (channel, sku), exp in sorted(expected.items()):
        if channel not in push_channels:
            continue
        told = acked.get((channel, sku))
        if (0 if told is None else told) != exp.ats:
            findings.append(Finding("channel_mismatch", "availability", f"{channel}/{sku}", exp.ats, told,
                                    {"recomputed": asdict(exp), "acknowledged_ats": told}))
    return findings


def read_push_acks(settings: Settings, channels: Sequence[str], sku_like: str | None) -> dict[tuple[str, str], int]:
    """(channel, sku) -> the ATS each push channel acknowledged (connectors.http_channels)."""
    if not channels:
        return {}
    with ops_db.connect(settings) as conn:
        exists = conn.execute("SELECT to_regclass('sync.channel_deliveries') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return {}
        return {(ch, sku): int(ats) for ch, sku, ats in conn.execute(
            "SELECT channel, key, acked_ats FROM sync.channel_deliveries WHERE kind = 'availability'"
            " AND acked_ats IS NOT NULL AND channel = ANY(%s) AND key LIKE %s", (list(channels), sku_like or "%"))}


def _int_or_raw(raw: str) -> int | str:
    try:
        return int(raw)
    except ValueError:
        return raw  # not what the read contract promises: never equal to an ATS


# ----------------------------------------------------------------------------- pure: orders


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    qty: int
    unit_price: Decimal
    status: str  # open | cancelled | shipped


@dataclass(frozen=True, slots=True)
class Shipment:
    carrier: str
    tracking_no: str | None
    status: str  # packed | dispatched | delivered
    freight_cost: Decimal


@dataclass
class ErpOrder:
    """One ERP sales order with every ERP and WMS row about it."""

    order_id: int
    channel: str
    external_order_id: str
    status: str
    order_total: Decimal
    lines: dict[int, Line] = field(default_factory=dict)
    allocations: list[tuple[int, int, str]] = field(default_factory=list)  # line_no, qty, status
    shipments: dict[int, Shipment] = field(default_factory=dict)
    shipment_lines: list[tuple[int, int, int]] = field(default_factory=list)  # shipment_id, line_no, qty
    invoices: dict[int, tuple[Decimal, Decimal]] = field(default_factory=dict)  # id -> (total, freight)
    returns: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)  # rma -> line, qty, received ms
    credits: dict[int, tuple[str | None, Decimal]] = field(default_factory=dict)  # id -> (rma_id, amount)

    @property
    def key(self) -> str:
        return f"{self.channel}/{self.external_order_id}"

    def live_lines(self) -> dict[int, Line]:
        """Lines that count for the status: every line not cancelled."""
        return {n: ln for n, ln in self.lines.items() if ln.status != "cancelled"}

    def allocated(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for line_no, qty, status in self.allocations:
            if status != "cancelled":
                out[line_no] += qty
        return out

    def shipped(self) -> Counter[int]:
        """Per line: quantities on dispatched or delivered shipments."""
        out: Counter[int] = Counter()
        for shipment_id, line_no, qty in self.shipment_lines:
            s = self.shipments.get(shipment_id)
            if s is not None and s.status in DISPATCHED:
                out[line_no] += qty
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


def status_differences(expected: Mapping[str, Any], told: Mapping[str, Any]) -> list[str]:
    """The fields of STATUS_FIELDS in which what was told differs from what was expected."""
    def norm(name: str, value: Any) -> Any:
        if name == "lines":
            return sorted(({k: line[k] for k in ("line_no", "sku", "ordered", "allocated", "shipped")}
                           for line in value or []), key=lambda line: line["line_no"])
        return sorted(value or []) if name in ("carriers", "tracking_numbers") else value
    return [name for name in STATUS_FIELDS if norm(name, expected.get(name)) != norm(name, told.get(name))]


def order_discrepancies(order: ErpOrder, now_ms: int, credit_sla_ms: int) -> list[Finding]:
    """What the ERP and WMS rows of one order show by themselves, whatever the pipeline did."""
    key, out = order.key, []

    def found(kind: str, expected: Any, actual: Any, **detail: Any) -> None:
        out.append(Finding(kind, "order", key, expected, actual, {"order_id": order.order_id, **detail}))

    if order.invoices:
        invoiced = sum((t for t, _ in order.invoices.values()), Decimal(0))
        if invoiced != order.order_total:
            found("invoice_discrepancy", str(order.order_total), str(invoiced), invoice_ids=sorted(order.invoices))
        billed = sum((f for _, f in order.invoices.values()), Decimal(0))
        freight = sum((s.freight_cost for s in order.shipments.values()), Decimal(0))
        if billed != freight:
            found("freight_discrepancy", str(freight), str(billed), invoice_ids=sorted(order.invoices),
                  shipment_ids=sorted(order.shipments))
    lines, shipped = order.live_lines(), order.shipped()
    over = {n: shipped[n] for n, ln in lines.items() if shipped[n] > ln.qty}
    if over:
        found("overship", {str(n): lines[n].qty for n in over}, {str(n): q for n, q in over.items()})
    short = sorted(n for n, ln in lines.items() if shipped[n] < ln.qty)
    if order.status in ERP_SHIPPED and lines and short:
        found("short_shipment", {str(n): lines[n].qty for n in short}, {str(n): shipped[n] for n in short},
              erp_status=order.status, spec_kind="status_mismatch")
    elif order.status in COMMITTING_ORDER_STATUSES and lines and not short:
        found("status_mismatch", order.status, "dispatched",
              reason=f"the WMS dispatched every line but the ERP still says {order.status}")
    live_allocations = [a for a in order.allocations if a[2] not in ("cancelled", "shipped")]
    if order.status == "cancelled" and live_allocations:
        found("status_mismatch", "cancelled", "allocated",
              reason="the ERP cancelled the order but the WMS still holds allocations")
    credited: dict[str, Decimal] = defaultdict(Decimal)
    for rma, amount in order.credits.values():
        if rma:
            credited[rma] += amount
    for rma, amount in sorted(credited.items()):
        returned = order.returns.get(rma)
        if returned is None:
            found("credit_discrepancy", None, str(amount), rma_id=rma, reason="no such return in the WMS")
            continue
        line = order.lines.get(returned[0])
        expected = (line.unit_price * returned[1]).quantize(CENT, ROUND_HALF_UP) if line else None
        if amount != expected:
            found("credit_discrepancy", None if expected is None else str(expected), str(amount), rma_id=rma,
                  line_no=returned[0], returned_qty=returned[1])
    for rma, (line_no, qty, received_ms) in sorted(order.returns.items()):
        if rma not in credited:
            age = None if received_ms is None else now_ms - received_ms
            found("credit_pending", "credit memo", None, rma_id=rma, line_no=line_no, returned_qty=qty,
                  received_ms=received_ms, age_ms=age, past_sla=age is not None and age > credit_sla_ms)
    return out


@dataclass(frozen=True)
class OrderResult:
    findings: list[Finding]
    keys: set[str]  # every channel order in scope: ERP orders, intakes, published statuses
    expected: dict[str, dict[str, Any]]  # key -> status channels should see (configured channels only)
    invoices: int
    invoices_with_discrepancy: int
    rejected: set[str]


def compare_orders(orders: Sequence[ErpOrder], intake_keys: set[str], published: Mapping[str, Mapping[str, Any]],
                   channel_ids: set[str], now_ms: int, credit_sla_ms: int) -> OrderResult:
    """ERP orders (and intakes) against sync.order_status rows (key -> row), plus each order's discrepancies."""
    findings: list[Finding] = []
    expected: dict[str, dict[str, Any]] = {}
    invoices = invoices_bad = 0
    for order in sorted(orders, key=lambda o: o.key):
        found = order_discrepancies(order, now_ms, credit_sla_ms)
        findings.extend(found)
        invoices += len(order.invoices)
        if any(f.kind == "invoice_discrepancy" for f in found):
            invoices_bad += len(order.invoices)
        if order.channel in channel_ids:
            expected[order.key] = expected_status(order)
    in_erp = {o.key for o in orders}
    for key in sorted(intake_keys - in_erp):
        if key.split("/", 1)[0] in channel_ids:
            expected[key] = dict(RECEIVED)
    for key, exp in sorted(expected.items()):
        row = published.get(key)
        if row is None:
            findings.append(Finding("missing_order_status", "order", key, exp["status"], None,
                                    {"order_id": exp["order_id"]}))
            continue
        fields = status_differences(exp, row)
        if fields:
            findings.append(Finding("order_status_mismatch", "order", key, {f: exp[f] for f in fields},
                                    {f: row.get(f) for f in fields},
                                    {"order_id": exp["order_id"], "fields": fields,
                                     "last_fact_ms": row.get("last_fact_ms"), "written_at": row.get("written_at")}))
    rejected = {k for k, row in published.items() if row["status"] == "rejected"}
    for key, row in sorted(published.items()):
        if key not in in_erp and key not in intake_keys and key not in rejected:
            findings.append(Finding("order_missing_in_erp", "order", key, None, row["status"],
                                    {"written_at": row.get("written_at")}))
    keys = in_erp | intake_keys | set(published)
    return OrderResult(findings, keys, expected, invoices, invoices_bad, rejected)


def order_exception_rate(keys: set[str], findings: Iterable[Finding], rejected: set[str],
                         exception_keys: set[str]) -> tuple[int, int]:
    """(orders with any finding, rejection or sync.exceptions row, orders) over the orders in scope."""
    flagged = {f.business_key for f in findings if f.entity == "order"} | rejected | exception_keys
    return len(keys & flagged), len(keys)


# ----------------------------------------------------------------------------- reading the systems


def _chunks(ids: Iterable[int], size: int = 1000) -> Iterator[tuple[int, ...]]:
    ordered = sorted(set(ids))
    for i in range(0, len(ordered), size):
        yield tuple(ordered[i:i + size])


def _erp_snapshot(settings: Settings) -> psycopg.Connection[Any]:
    """The ERP, read-only, one snapshot for every query of the run."""
    e = settings.erp
    conn = psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                           password=e.password.get_secret_value(), connect_timeout=10)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def _wms_snapshot(settings: Settings) -> Any:
    w = settings.wms
    conn = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                           database=w.dbname, connect_timeout=10)
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
    return conn


_ERP_ITEMS = "SELECT sku, safety_stock, status FROM erp.items WHERE sku LIKE %s"
_ERP_COMMITTING_LINES = """
SELECT l.order_id, l.line_no, l.sku, l.qty
FROM erp.sales_order_lines l
JOIN erp.sales_orders o USING (order_id)
WHERE l.status = 'open'
  AND o.status IN ('entered', 'released', 'on_hold', 'allocated')
  AND l.sku LIKE %s
"""
# Lines of intakes the ERP has neither imported nor failed; the TTL is applied in Python, per channel.
_ERP_PENDING_INTAKE = """
SELECT i.channel, i.external_order_id, line->>'sku', (line->>'qty')::bigint,
       coalesce((i.payload->>'accepted_at_ms')::bigint, (extract(epoch FROM i.received_at) * 1000)::bigint)
FROM erp.order_intake i
CROSS JOIN LATERAL jsonb_array_elements(i.payload->'lines') AS line
WHERE i.status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM erp.sales_orders o
                  WHERE o.channel = i.channel AND o.external_order_id = i.external_order_id)
  AND line->>'sku' LIKE %s
"""
_WMS_BALANCES = "SELECT sku, location, on_hand, allocated, in_transit FROM inventory_balances WHERE sku LIKE %s"
_WMS_ALLOCATED = """
SELECT order_id, line_no, SUM(qty)
FROM allocations
WHERE status <> 'cancelled' AND order_id IN %s
GROUP BY order_id, line_no
"""


def read_inventory(erp: psycopg.Connection[Any], wms: Any, sku_like: str | None) -> InventoryFacts:
    like, exact = sku_like or "%", like_regex(sku_like)
    facts = InventoryFacts()
    now = erp.execute("SELECT (extract(epoch FROM now()) * 1000)::bigint").fetchone()
    facts.now_ms = int(now[0]) if now else 0
    facts.items = {sku: (int(safety), status) for sku, safety, status in erp.execute(_ERP_ITEMS, (like,))}
    facts.open_lines = [(int(o), int(n), sku, int(q)) for o, n, sku, q in erp.execute(_ERP_COMMITTING_LINES, (like,))]
    facts.pending_intake = [PendingIntake(c, x, sku, int(q), int(ms))
                            for c, x, sku, q, ms in erp.execute(_ERP_PENDING_INTAKE, (like,))]
    with wms.cursor() as cur:
        cur.execute(_WMS_BALANCES, (like,))
        for sku, location, on_hand, allocated, in_transit in cur.fetchall():
            if exact.fullmatch(sku):  # MariaDB's LIKE ignores case under the default collation
                facts.balances.setdefault(sku, {})[location] = (int(on_hand), int(allocated), int(in_transit))
        for ids in _chunks(o for o, _, _, _ in facts.open_lines):
            cur.execute(_WMS_ALLOCATED, (ids,))
            facts.wms_allocated.update({(int(o), int(n)): int(q) for o, n, q in cur.fetchall()})
    return facts


_ERP_ORDERS = """
SELECT order_id, channel, external_order_id, status, order_total
FROM erp.sales_orders
WHERE external_order_id LIKE %s
"""
_ERP_ORDER_LINES = """
SELECT l.order_id, l.line_no, l.sku, l.qty, l.unit_price, l.status
FROM erp.sales_order_lines l
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_INVOICES = """
SELECT i.order_id, i.invoice_id, i.invoice_total, i.freight_total
FROM erp.invoices i
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_CREDITS = """
SELECT c.order_id, c.credit_memo_id, c.rma_id, c.amount
FROM erp.credit_memos c
JOIN erp.sales_orders o USING (order_id)
WHERE o.external_order_id LIKE %s
"""
_ERP_INTAKES = "SELECT channel, external_order_id FROM erp.order_intake WHERE external_order_id LIKE %s"
_WMS_ORDER_ALLOCATIONS = "SELECT order_id, line_no, qty, status FROM allocations WHERE order_id IN %s"
_WMS_SHIPMENTS = """
SELECT shipment_id, order_id, carrier, tracking_no, status, freight_cost
FROM shipments
WHERE order_id IN %s
"""
_WMS_SHIPMENT_LINES = """
SELECT s.order_id, l.shipment_id, l.line_no, l.qty
FROM shipment_lines l
JOIN shipments s USING (shipment_id)
WHERE s.order_id IN %s
"""
_WMS_RETURNS = "SELECT rma_id, order_id, line_no, qty, received_at FROM returns WHERE order_id IN %s"


def read_orders(erp: psycopg.Connection[Any], wms: Any, order_like: str | None) -> tuple[list[ErpOrder], set[str]]:
    """ERP orders whose external id matches, with their ERP and WMS rows; and the matching intake keys."""
    like = order_like or "%"
    orders = {int(o): ErpOrder(int(o), c, x, s, total) for o, c, x, s, total in erp.execute(_ERP_ORDERS, (like,))}
    for o, n, sku, qty, price, status in erp.execute(_ERP_ORDER_LINES, (like,)):
        orders[int(o)].lines[int(n)] = Line(sku, int(qty), price, status)
    for o, invoice_id, total, freight in erp.execute(_ERP_INVOICES, (like,)):
        orders[int(o)].invoices[int(invoice_id)] = (total, freight)
    for o, credit_id, rma, amount in erp.execute(_ERP_CREDITS, (like,)):
        orders[int(o)].credits[int(credit_id)] = (rma, amount)
    intakes = {f"{c}/{x}" for c, x in erp.execute(_ERP_INTAKES, (like,))}
    with wms.cursor() as cur:
        for ids in _chunks(orders):
            cur.execute(_WMS_ORDER_ALLOCATIONS, (ids,))
            for o, n, qty, status in cur.fetchall():
                orders[int(o)].allocations.append((int(n), int(qty), status))
            cur.execute(_WMS_SHIPMENTS, (ids,))
            for shipment_id, o, carrier, tracking, status, freight in cur.fetchall():
                orders[int(o)].shipments[int(shipment_id)] = Shipment(carrier, tracking, status, Decimal(freight))
            cur.execute(_WMS_SHIPMENT_LINES, (ids,))
            for o, shipment_id, n, qty in cur.fetchall():
                orders[int(o)].shipment_lines.append((int(shipment_id), int(n), int(qty)))
            cur.execute(_WMS_RETURNS, (ids,))
            for rma, o, n, qty, received in cur.fetchall():
                received_ms = None if received is None else int(received.replace(tzinfo=UTC).timestamp() * 1000)
                orders[int(o)].returns[rma] = (int(n), int(qty), received_ms)  # WMS times are UTC
    return list(orders.values()), intakes


_OPS_AVAILABILITY = """
SELECT channel, sku, ats, on_hand, allocated, in_transit, committed_open, intake_reserved, safety_stock,
       network, status, event_time_ms, written_at
FROM sync.availability
WHERE sku LIKE %s
"""
_OPS_ORDER_STATUS = """
SELECT channel, external_order_id, order_id, status, reasons, lines, carriers, tracking_numbers, last_fact_ms,
       written_at
FROM sync.order_status
WHERE external_order_id LIKE %s
"""
# Source commit -> sink write, per sink and overall (ROLLUP's NULL row); percentile_disc is nearest rank.
_OPS_LATENCY = """
WITH samples AS (
    SELECT 'availability' AS sink, extract(epoch FROM written_at) * 1000 - event_time_ms AS ms
    FROM sync.availability
    WHERE sku LIKE %(skus)s AND written_at >= to_timestamp(%(since_ms)s / 1000.0) AND event_time_ms > 0
    UNION ALL
    SELECT 'order_status', extract(epoch FROM written_at) * 1000 - last_fact_ms
    FROM sync.order_status
    WHERE external_order_id LIKE %(orders)s AND written_at >= to_timestamp(%(since_ms)s / 1000.0)
      AND last_fact_ms > 0
)
SELECT coalesce(sink, 'all'), count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)
FROM samples
GROUP BY ROLLUP (sink)
"""
# Exceptions are in scope by their business key: "<channel>/<sku>" (availability), "<sku>" (item),
# "<channel>/<external order id>[/...]" (orders); other entities only when nothing is filtered.
_OPS_SCOPE = """
CASE
    WHEN entity = 'availability' THEN substr(business_key, strpos(business_key, '/') + 1) LIKE %(skus)s
    WHEN entity = 'item' THEN business_key LIKE %(skus)s
    WHEN entity IN ('order', 'channel_order', 'order_intake') THEN split_part(business_key, '/', 2) LIKE %(orders)s
    ELSE %(unfiltered)s
END
"""
_OPS_OPEN_EXCEPTIONS = f"SELECT kind, count(*) FROM sync.exceptions WHERE state = 'open' AND {_OPS_SCOPE} GROUP BY kind"
_OPS_EXCEPTION_ORDERS = """
SELECT DISTINCT split_part(business_key, '/', 1) || '/' || split_part(business_key, '/', 2)
FROM sync.exceptions
WHERE entity IN ('order', 'channel_order', 'order_intake') AND split_part(business_key, '/', 2) LIKE %(orders)s
"""


@dataclass
class Published:
    """What the operations database says channels were told, and its KPI inputs."""

    availability: dict[tuple[str, str], dict[str, Any]]
    order_status: dict[str, dict[str, Any]]
    latency: dict[str, Latency]
    open_exceptions: dict[str, int] | None
    exception_orders: set[str]


def read_ops(settings: Settings, sku_like: str | None, order_like: str | None, since_ms: int | None) -> Published:
    params = {"skus": sku_like or "%", "orders": order_like or "%", "since_ms": since_ms or 0,
              "unfiltered": sku_like is None and order_like is None}
    with ops_db.connect(settings) as conn:
        conn.read_only = True
        rows = conn.cursor(row_factory=dict_row)
        availability: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows.execute(_OPS_AVAILABILITY, (params["skus"],)):
            pair = (row.pop("channel"), row.pop("sku"))
            availability[pair] = {**row, "written_at": str(row["written_at"])}
        statuses: dict[str, dict[str, Any]] = {}
        for row in rows.execute(_OPS_ORDER_STATUS, (params["orders"],)):
            order_key = f"{row.pop('channel')}/{row.pop('external_order_id')}"
            statuses[order_key] = {**row, "written_at": str(row["written_at"])}
        latency = {sink: Latency(0, None, None) for sink in ("availability", "order_status", "all")}
        for sink, count, p50, p99 in conn.execute(_OPS_LATENCY, params):
            latency[sink] = Latency(int(count), _ms(p50), _ms(p99))
        exists = conn.execute("SELECT to_regclass('sync.exceptions') IS NOT NULL").fetchone()
        open_exceptions, exception_orders = None, set()
        if exists and exists[0]:
            open_exceptions = {k: int(n) for k, n in conn.execute(_OPS_OPEN_EXCEPTIONS, params)}
            exception_orders = {k for (k,) in conn.execute(_OPS_EXCEPTION_ORDERS, params)}
    return Published(availability, statuses, latency, open_exceptions, exception_orders)


def _ms(value: Decimal | None) -> float | None:
    return None if value is None else round(float(value), 1)


def read_redis(settings: Settings, channels: Sequence[Channel], sku_like: str | None) -> dict[str, dict[str, str]]:
    """Per channel, sku -> raw value of ``ats:<channel>`` for the SKUs matching (HSCAN: none is missed)."""
    client = redis_client(settings, reader=True)
    glob, exact = like_glob(sku_like), like_regex(sku_like)
    try:
        out: dict[str, dict[str, str]] = {}
        for c in channels:
            values = out.setdefault(c.id, {})
            for sku, raw in client.hscan_iter(f"ats:{c.id}", match=glob, count=1000):
                name = sku.decode()
                if exact.fullmatch(name):
                    values[name] = raw.decode()
        return out
    finally:
        client.close()


TopicValues = dict[tuple[str, str], dict[str, Any] | None]  # (topic, key) -> latest value, None: a tombstone


def read_topic_tails(settings: Settings, topics: Sequence[str], records: int,
                     keep: Callable[[str, str], bool]) -> tuple[TopicValues, list[str]]:
    """The latest value of each key among the last `records` records of each topic (None: a tombstone).

    A compacted topic keeps each key's latest record nearest its end, so a key seen in the tail is
    seen with its latest value; keys only older than the tail are not returned (and not compared).
    """
    from schemas.registry import SchemaRegistry, make_value_deserializer  # noqa: PLC0415 - only for --topics

    deserialize = make_value_deserializer(SchemaRegistry.load(), settings.kafka.schema_registry_url)
    consumer = Consumer(settings.kafka.client_config() | {"group.id": "erpsync-reconcile", "enable.auto.commit": False,
                                                          "enable.partition.eof": True})
    latest: TopicValues = {}
    notes: list[str] = []
    try:
        meta = consumer.list_topics(timeout=10)
        assignment, ends = [], {}
        for topic in topics:
            if topic not in meta.topics:
                notes.append(f"topic {topic}: does not exist, not compared")
                continue
            partitions = sorted(meta.topics[topic].partitions)
            per_partition = max(1, math.ceil(records / len(partitions)))
            total = skipped = 0
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = max(low, high - per_partition)
                total, skipped = total + high - low, skipped + start - low
                if high > start:
                    assignment.append(TopicPartition(topic, p, start))
                    ends[(topic, p)] = high
            if skipped:
                notes.append(f"topic {topic}: read the last {total - skipped} of {total} records; keys only in "
                             f"older records were not compared")
        consumer.assign(assignment)
        while ends:
            msg = consumer.poll(5.0)
            if msg is None:
                raise KafkaException(f"no record within 5 s while reading {sorted(ends)}")
            topic, partition = msg.topic() or "", msg.partition() or 0
            if msg.error() is None:
                key = (msg.key() or b"").decode()
                raw = msg.value()
                if keep(topic, key):
                    latest[(topic, key)] = None if raw is None else (
                        json.loads(raw) if raw[:1] == b"{" else deserialize(topic, raw)[1])
            if msg.error() is not None or (msg.offset() or 0) + 1 >= ends.get((topic, partition), 0):
                ends.pop((topic, partition), None)
    finally:
        consumer.close()
    return latest, notes


def compare_topics(latest: TopicValues, ats: Mapping[tuple[str, str], Ats],
                   statuses: Mapping[str, dict[str, Any]], channels: Sequence[Channel]) -> list[Finding]:
    """The latest availability.<channel> / order-status.<channel> records against the recomputed values."""
    findings = []
    for c in channels:
        for (channel, sku), exp in sorted(ats.items()):
            if channel == c.id and (c.topic, sku) in latest:
                value = latest[(c.topic, sku)]
                told = None if value is None else value["ats"]
                if told != exp.ats:
                    findings.append(Finding("ats_mismatch_topic", "availability", f"{channel}/{sku}", exp.ats,
                                            told, {"topic": c.topic, "recomputed": asdict(exp)}))
        for key, exp_status in sorted(statuses.items()):
            channel, _, ext = key.partition("/")
            if channel == c.id and (c.order_status_topic, ext) in latest:
                record = latest[(c.order_status_topic, ext)] or {}
                fields = status_differences(exp_status, record)
                if fields:
                    findings.append(Finding("order_status_mismatch_topic", "order", key,
                                            {f: exp_status[f] for f in fields}, {f: record.get(f) for f in fields},
                                            {"topic": c.order_status_topic, "fields": fields}))
    return findings


# ----------------------------------------------------------------------------- the run


STEPS = ("reading the ERP and the WMS", "reading the ops database and Redis", "recomputing and comparing",
         "reading the channel topics", "storing the run")


def reconcile(settings: Settings, *, sku_like: str | None = None, order_like: str | None = None,
              since_ms: int | None = None, min_accuracy_pct: float | None = None, topic_records: int | None = None,
              store: bool = True, channels: Sequence[Channel] | None = None,
              on_step: Callable[[str], None] | None = None) -> Report:
    """Reconcile the SKUs and orders in scope (SQL LIKE patterns; None: all) and, if `store`, save the run.

    since_ms limits the sync-latency sample to rows written since then. topic_records (None: the
    topics are not read) is how many of the newest records of each compacted topic to compare.
    on_step (progress) is called with each of STEPS as it begins.
    """
    step = on_step or (lambda name: None)
    started = datetime.now(UTC)
    channels = tuple(channels or configured_channels(settings))
    step("reading the ERP and the WMS")
    with closing(_erp_snapshot(settings)) as erp, closing(_wms_snapshot(settings)) as wms:
        facts = read_inventory(erp, wms, sku_like)
        orders, intakes = read_orders(erp, wms, order_like)
    step("reading the ops database and Redis")
    published = read_ops(settings, sku_like, order_like, since_ms)
    told = read_redis(settings, [c for c in channels if c.outputs.redis], sku_like)
    ids = {c.id for c in channels}

    skus = facts.skus() | {sku for ch, sku in published.availability if ch in ids} | {
        sku for values in told.values() for sku in values}
    step("recomputing and comparing")
    ats = recompute_ats(facts, channels, skus)
    inventory = compare_inventory(ats, told, published.availability, facts.known(),
                                  {c.id for c in channels if c.outputs.redis})
    result = compare_orders(orders, intakes, published.order_status, ids, facts.now_ms,
                            int(settings.flows.credit_sla_s * 1000))
    findings = inventory.findings + result.findings
    pushed = {c.id for c in channels if c.outputs.push is not None and "availability" in c.outputs.push.sends}
    findings += compare_push(ats, read_push_acks(settings, sorted(pushed), sku_like), pushed)
    notes: list[str] = []
    if topic_records is not None:
        step("reading the channel topics")
        order_keys = {k.partition("/")[2] for k in result.expected}
        wanted = {c.topic for c in channels if c.outputs.kafka} | {
            c.order_status_topic for c in channels if c.outputs.kafka}
        latest, notes = read_topic_tails(
            settings, sorted(wanted), topic_records,
            lambda topic, key: key in order_keys if topic.startswith("order-status.") else key in skus)
        findings += compare_topics(latest, ats, result.expected, channels)
        seen = Counter(topic.split(".", 1)[0] for topic, _ in latest)
        notes.append(f"topics: compared {seen['availability']} availability and {seen['order-status']} "
                     f"order-status keys found in the newest {topic_records} records of each topic")
    if published.open_exceptions is None:
        notes.append("the ops database has no sync.exceptions table: open exceptions and pipeline exceptions "
                     "are not counted")
    with_exceptions, orders_in_scope = order_exception_rate(result.keys, findings, result.rejected,
                                                            published.exception_orders)
    kpis = Kpis(
        inventory_pairs=inventory.pairs, inventory_accurate=inventory.accurate,
        inventory_accuracy_pct=percent(inventory.accurate, inventory.pairs),
        orders=orders_in_scope, orders_with_exceptions=with_exceptions,
        order_exception_rate_pct=percent(with_exceptions, orders_in_scope),
        invoices=result.invoices, invoices_with_discrepancy=result.invoices_with_discrepancy,
        invoice_discrepancy_rate_pct=percent(result.invoices_with_discrepancy, result.invoices),
        sync_latency_ms=published.latency, open_exceptions_by_kind=published.open_exceptions)
    scope = {"skus": sku_like, "orders": order_like, "since_ms": since_ms, "topic_records": topic_records,
             "channels": sorted(ids)}
    report = Report(scope, started, datetime.now(UTC), kpis, findings, notes, min_accuracy_pct)
    log.info("reconciled %d SKU x channel pairs and %d orders: %d findings", inventory.pairs, orders_in_scope,
             len(findings))
    if store:
        step("storing the run")
        report.run_id = store_report(settings, report)
    return report


_INSERT_RUN = """
INSERT INTO sync.reconciliation_runs (started_at, finished_at, scope, kpis, accuracy, min_accuracy, passed)
VALUES (%s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""
_COPY_FINDINGS = """
COPY sync.reconciliation_findings (run_id, seq, kind, entity, business_key, expected, actual, detail) FROM STDIN
"""


def store_report(settings: Settings, report: Report) -> int:
    """Save the run and its findings in one transaction (migrating the ops database first); the run id."""
    ops_db.migrate(settings)

    def as_json(value: Any) -> str | None:
        return None if value is None else json.dumps(value, default=str)

    with ops_db.connect(settings) as conn:
        row = conn.execute(_INSERT_RUN, (
            report.started_at, report.finished_at, as_json(report.scope), as_json(asdict(report.kpis)),
            report.kpis.inventory_accuracy_pct, report.min_accuracy_pct, report.passed)).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        run_id = int(row[0])
        with conn.cursor() as cur, cur.copy(_COPY_FINDINGS) as copy:
            for seq, f in enumerate(report.findings, 1):
                copy.write_row((run_id, seq, f.kind, f.entity, f.business_key, as_json(f.expected),
                                as_json(f.actual), as_json(f.detail) or "{}"))
        conn.commit()
    return run_id


# ----------------------------------------------------------------------------- the report


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _explain(f: Finding) -> str:
    d = f.detail
    if "recomputed" not in d:
        return ", ".join(f"{k}={_show(v)}" for k, v in d.items() if v is not None)
    r, ops = d["recomputed"], d.get("ops_db")
    text = (f"{r['status']}: free {r['free']} - safety {r['safety_stock']} - committed {r['committed_open']}"
            f" - reserved {r['intake_reserved']} = network {r['network']}")
    if ops:
        differ = [f"{name} {r[name]}/{ops[name]}" for name in _EXPLAINED if r[name] != ops[name]]
        text += "; recomputed/ops db: " + (", ".join(differ) if differ else f"ats {r['ats']}/{ops['ats']}")
    return text


_EXPLAINED = ("on_hand", "allocated", "in_transit", "safety_stock", "committed_open", "intake_reserved", "network",
              "status")


def render(report: Report, width: int = 160) -> str:
    """The human report: scope, KPIs, then every finding grouped by kind."""
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False, soft_wrap=False)
    k = report.kpis
    s = report.scope
    console.print(f"erpsync reconcile{'' if report.run_id is None else f' run {report.run_id}'}: "
                  f"SKUs {s['skus'] or 'all'}, orders {s['orders'] or 'all'}, channels {', '.join(s['channels'])}; "
                  f"{report.started_at:%Y-%m-%d %H:%M:%S} UTC, "
                  f"{(report.finished_at - report.started_at).total_seconds():.1f}s")

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}%"

    since = None if s["since_ms"] is None else datetime.fromtimestamp(s["since_ms"] / 1000, UTC).isoformat()
    table = Table(title="KPIs")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    table.add_column("of")
    table.add_row("inventory accuracy", pct(k.inventory_accuracy_pct),
                  f"{k.inventory_accurate} of {k.inventory_pairs} SKU x channel pairs")
    table.add_row("order exception rate", pct(k.order_exception_rate_pct),
                  f"{k.orders_with_exceptions} of {k.orders} orders (finding, rejection or sync.exceptions row)")
    table.add_row("invoice discrepancy rate", pct(k.invoice_discrepancy_rate_pct),
                  f"{k.invoices_with_discrepancy} of {k.invoices} invoices")
    for sink, lat in k.sync_latency_ms.items():
        table.add_row(f"sync latency p50 / p99 ({sink})",
                      "n/a" if lat.p50_ms is None else f"{lat.p50_ms:.0f} / {lat.p99_ms:.0f} ms",
                      f"{lat.count} rows" + ("" if s["since_ms"] is None else f" written since {since}"))
    if k.open_exceptions_by_kind is None:
        table.add_row("open exceptions", "n/a", "no sync.exceptions table")
    else:
        table.add_row("open exceptions", str(sum(k.open_exceptions_by_kind.values())),
                      ", ".join(f"{kind} {n}" for kind, n in sorted(k.open_exceptions_by_kind.items())) or "-")
    console.print(table)
    console.print(ACCURACY_DEFINITION + ".")
    if report.min_accuracy_pct is not None:
        verdict = "passed" if report.passed else "FAILED" + ("" if k.inventory_pairs else " (nothing in scope)")
        console.print(f"threshold {report.min_accuracy_pct}%: {verdict}")
    by_kind = report.by_kind()
    if not by_kind:
        console.print("no differences found")
    for kind, found in by_kind.items():
        table = Table(title=f"{kind} ({len(found)}): {KIND_HELP.get(kind, '')}", title_justify="left")
        for col in ("business key", "expected", "actual", "detail"):
            table.add_column(col, overflow="fold")
        for f in found:
            table.add_row(f.business_key, _show(f.expected), _show(f.actual), _explain(f))
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    return out.getvalue()


# ----------------------------------------------------------------------------- the command


def parse_since(text: str) -> int:
    """--since: epoch milliseconds, or an ISO 8601 time (UTC when it has no offset)."""
    if text.isdigit():
        if len(text) > 15:  # past the year 33658: not a time anyone means (and beyond a bigint as microseconds)
            raise argparse.ArgumentTypeError(f"epoch milliseconds out of range: {text}")
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (e.g. 2026-11-27T10:00:00Z) or epoch milliseconds, got {text!r}") from exc
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


DESCRIPTION = f"""\
Read the ERP and the WMS directly and compare them with what channels were told: ATS per SKU and
channel (spec section 5) with Redis ats:<channel> and sync.availability; order status and lines
(spec section 7) with sync.order_status; invoices, freight, credit memos, returns and shipments
with each other. Prints every difference by kind and the KPIs, and saves the run and its findings
in sync.reconciliation_runs and sync.reconciliation_findings.

{textwrap.fill(ACCURACY_DEFINITION + ".", 98)}

Exit status: 0; 1 when --min-accuracy is given and inventory accuracy is below it (or nothing is
in scope); 2 when a system cannot be read.
"""


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``reconcile`` to the ``erpsync`` command line."""
    p = subparsers.add_parser(
        "reconcile", help="compare ERP and WMS (read directly) with what channels were told; KPIs",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", metavar="PATTERN", help="SQL LIKE pattern on SKUs, e.g. 'SKU-T123%%' (default: all)")
    p.add_argument("--orders", metavar="PATTERN", help="SQL LIKE pattern on external order ids (default: all)")
    p.add_argument("--since", type=parse_since, metavar="ISO|MS",
                   help="sync latency over rows written since then (default: every row in scope)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--min-accuracy", type=float, metavar="PCT",
                   help="exit 1 when inventory accuracy is below PCT percent (default: no threshold, exit 0)")
    p.add_argument("--topics", action="store_true",
                   help="also compare the newest records of availability.<channel> and order-status.<channel>")
    p.add_argument("--topic-records", type=int, default=100_000, metavar="N",
                   help="with --topics: how many of the newest records of each topic to read (default 100000)")
    p.add_argument("--no-store", action="store_true", help="do not save the run in the ops database")
    p.set_defaults(func=lambda settings, args: main(args, settings))


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command: 0 ok, 1 inventory accuracy below --min-accuracy (a system that cannot be read raises)."""
    # A system that cannot be read raises: the command line reports it in one line (exit 3).
    from erpsync.progress import track  # noqa: PLC0415

    steps = [s for s in STEPS if (args.topics or s != "reading the channel topics")
             and (not args.no_store or s != "storing the run")]
    with track("reconcile", total=len(steps), unit="steps", interval_s=settings.cli.progress_interval_s) as t:
        report = reconcile(settings, sku_like=args.skus, order_like=args.orders, since_ms=args.since,
                           min_accuracy_pct=args.min_accuracy, store=not args.no_store,
                           topic_records=args.topic_records if args.topics else None,
                           on_step=lambda name: t.update(completed=steps.index(name), note=f"{name} ..."))
        t.update(completed=len(steps), note="")
    print(report.to_json() if args.json else render(report).rstrip("\n"))
    return 0 if report.passed else 1
