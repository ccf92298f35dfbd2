"""The report of a run: its result (``Report``) and the two forms people read, text and JSON.

``render`` prints the scope, the KPIs and every finding grouped by kind, explaining an ATS finding
with the terms of its formula; ``Report.to_json`` is the same for programs. Pure: storing the run
belongs to ``run``.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from erpsync.reconcile.findings import KIND_HELP, Finding
from erpsync.reconcile.kpis import ACCURACY_DEFINITION, Kpis, meets


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
