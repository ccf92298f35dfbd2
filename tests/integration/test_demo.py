"""`make demo` as a newcomer runs it: a fresh stack home, nothing created before, to the end.

The demo gets its own stack (new home directory, its own free ports) started by `make demo`
itself, so no topic, table or connector offset that earlier tests created can help it: a raw
topic appears only with the demo's own first change, as on a fresh machine. Then the usual
assertions on what the demo shows.

The home is a `mktemp -d` directory, as the issue's reproduction used, not pytest's tmp_path:
every pytest session that starts (another one on the machine, say) takes the search permission
off /tmp/pytest-of-<user>, and the database servers, which run as their own users, then lose
their data directories (MariaDB: "binlog.000001 ... Permission denied", the WMS connector fails).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """n TCP ports nothing listens on now (bound once by the kernel's choice, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_make_demo_on_a_fresh_stack_home_runs_to_the_end(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="erpsync-fresh-home-"))
    assert not any(home.iterdir())
    kafka, controller, connect, postgres, ops, mariadb, redis, registry = free_ports(8)
    env = {**os.environ, "COLUMNS": "160", "ERPSYNC_STACK__HOME": str(home),
           "ERPSYNC_KAFKA__PORT": str(kafka), "ERPSYNC_KAFKA__CONTROLLER_PORT": str(controller),
           "ERPSYNC_CONNECT__PORT": str(connect), "ERPSYNC_ERP__PORT": str(postgres),
           "ERPSYNC_OPS__PORT": str(ops), "ERPSYNC_WMS__PORT": str(mariadb), "ERPSYNC_REDIS__PORT": str(redis),
           "ERPSYNC_REGISTRY__PORT": str(registry)}
    env.pop("ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL", None)  # the demo stack's own registry
    try:
        # short mode: 12 orders at 10/s (make demo sends 40 at 4/s)
        result = subprocess.run(["make", "--no-print-directory", "demo", "DEMO_ARGS=--orders 12 --rate 10"],
                                cwd=ROOT, capture_output=True, text=True, timeout=900, check=False, env=env)
    finally:
        down = subprocess.run([sys.executable, "-m", "erpsync", "stack", "down"], capture_output=True, text=True,
                              timeout=300, check=False, env=env)
        logs = home / "logs"
        if logs.is_dir():  # kept for a failure's diagnosis; the data (hundreds of MB) goes
            shutil.copytree(logs, tmp_path / "logs")
        shutil.rmtree(home, ignore_errors=True)
    (tmp_path / "demo.out").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    assert result.returncode == 0, f"see {tmp_path / 'demo.out'}\n" + result.stdout[-3000:] + result.stderr[-3000:]
    assert down.returncode == 0 and "kafka" in down.stdout, down.stdout + down.stderr
    assert (tmp_path / "logs" / "kafka.log").is_file()  # the demo ran on the fresh stack, not on another one
    out = result.stdout
    assert "demo complete" in out
    # every raw change, though no raw topic existed when the demo started reading
    raw = out.split("1. Debezium change events")[1].split("2. Canonical Avro events")[0]
    for topic in ("erp.erp.customers", "erp.erp.items", "wms.wms.inventory_balances", "wms.wms.allocations"):
        assert topic in raw, topic
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
