"""The KPIs of a run: inventory accuracy, order exception rate, invoice discrepancy rate, sync latency.

Their definitions and arithmetic only (pure): ``run`` computes them from the comparisons' results,
``report`` shows them, and ``--min-accuracy`` is judged with ``meets``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from erpsync.reconcile.findings import Finding

ACCURACY_DEFINITION = (
    "inventory accuracy = SKU x channel pairs (channels that publish to Redis; SKUs in the ERP item master, "
    "WMS stock, open ERP order lines, pending intakes, Redis or sync.availability) whose Redis value, an "
    "absent value read as 0 as storefronts do, equals the ATS recomputed from the ERP and WMS / all such pairs"
)


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


def percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100 * part / whole, 4)


def meets(accurate: int, pairs: int, min_pct: float | None) -> bool:
    """accurate/pairs >= min_pct percent, exactly; with a threshold, no pair at all fails (a typo'd scope)."""
    if min_pct is None:
        return True
    return pairs > 0 and Fraction(accurate * 100, pairs) >= Fraction(str(min_pct))


def order_exception_rate(keys: set[str], findings: Iterable[Finding], rejected: set[str],
                         exception_keys: set[str]) -> tuple[int, int]:
    """(orders with any finding, rejection or sync.exceptions row, orders) over the orders in scope."""
    flagged = {f.business_key for f in findings if f.entity == "order"} | rejected | exception_keys
    return len(keys & flagged), len(keys)
