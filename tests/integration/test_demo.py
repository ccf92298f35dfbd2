"""`erpsync demo` runs unattended to the end and shows raw, canonical and dead-lettered records."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_to_the_end(settings) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run([sys.executable, "-m", "erpsync", "demo"], capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "demo complete" in out
    assert "canonical.inventory-position" in out and "canonical.item" in out
    assert "unknown value 'misplaced'" in out  # the invalid WMS row reached the DLQ with its reason
    ats_table = out.split("4. Available-to-sell")[1].split("5. Channel orders")[0]
    ats = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in ats_table.splitlines()
           if line.count("│") >= 4 and line.split("│")[1].strip() in ("b2b-portal", "marketplace", "inside-sales")}
    assert ats == {"b2b-portal": "78", "marketplace": "62", "inside-sales": "78"}
    # the reference workload's orders: walked to invoiced, faulty ones rejected, faults raised as exceptions
    assert "5. Channel orders" in out and "invoiced" in out and "rejected" in out
    assert "sent twice, imported once" in out
    for kind in ("price_mismatch", "unknown_customer", "credit_hold", "invoice_discrepancy", "status_mismatch"):
        assert kind in out.split("6. Exceptions raised")[1], kind
