"""`erpsync demo` runs unattended to the end and shows raw, canonical and dead-lettered records."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_to_the_end(settings) -> None:  # type: ignore[no-untyped-def]
    # short mode: 12 orders at 10/s (make demo sends 40 at 4/s)
    result = subprocess.run([sys.executable, "-m", "erpsync", "demo", "--orders", "12", "--rate", "10"],
                            capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "demo complete" in out
    assert "canonical.inventory-position" in out and "canonical.item" in out
    assert "unknown value 'misplaced'" in out  # the invalid WMS row reached the DLQ with its reason
    ats_table = out.split("4. Available-to-sell")[1].split("Sending 12 channel orders")[0]
    ats = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in ats_table.splitlines()
           if line.count("│") >= 4 and line.split("│")[1].strip() in ("b2b-portal", "marketplace", "inside-sales")}
    assert ats == {"b2b-portal": "78", "marketplace": "62", "inside-sales": "78"}
    # the live view of the reference workload's orders: walked to invoiced, faulty ones rejected
    view = out.split("Sending 12 channel orders")[1].split("6. Exceptions raised")[0]
    assert "Order status (order-status.<channel>)" in view and "Open exceptions by kind" in view
    assert "sync latency, source commit -> ops database write: p50" in view
    lines = view.splitlines()
    header = next(i for i, line in enumerate(lines) if "received" in line and "rejected" in line and "┃" in line)
    names = [c.strip() for c in lines[header].split("┃")[1:-1]]
    counts = dict(zip(names, (int(c) for c in lines[header + 2].split("│")[1:-1]), strict=True))
    assert counts["invoiced"] > 0 and counts["rejected"] > 0, counts
    for kind in ("price_mismatch", "unknown_customer", "credit_hold", "invoice_discrepancy", "status_mismatch"):
        assert kind in out.split("6. Exceptions raised")[1], kind
    assert "unknown_sku" not in out.split("6. Exceptions raised")[1]  # items arrive within the grace
    # ending with the reconciliation report
    report = out.split("erpsync reconcile run")[1]
    assert "inventory accuracy" in report and "100.00%" in report and "invoice_discrepancy" in report
    # the marketplace pushed to its commerce API process: the demo SKU's ATS and shipped orders' tracking
    push = out.split("7. HTTP push")[1].split("Delivery status of the marketplace push")[0]
    assert "availability/SKU-DEMO" in push and "│ 62 " in push
    assert "tracking" not in push or "order_status/" in push
    status = out.split("Delivery status of the marketplace push")[1]
    assert "closed" in status or "open" in status
