"""`erpsync stack` on the real stack: idempotent up, down/up without re-snapshot, loud failures."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pymysql

from erpsync import stack

from .conftest import unique


def erpsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erpsync", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )


def test_up_twice_is_idempotent(settings) -> None:  # type: ignore[no-untyped-def]
    pids_before = {r["component"]: r["pid"] for r in stack.status(settings)}
    for _ in range(2):
        result = erpsync("stack", "up")
        assert result.returncode == 0, result.stderr
        steps = len(stack.all_components(settings)) + 2  # the install, each component, the migrations
        assert f"erpsync.progress: stack up: {steps} steps in " in result.stderr  # not a terminal: log lines
    pids_after = {r["component"]: r["pid"] for r in stack.status(settings)}
    assert pids_after == pids_before  # nothing was restarted


def test_down_then_up_resumes_from_offsets(settings, erp, wms, topic_reader) -> None:  # type: ignore[no-untyped-def]
    before_sku, after_sku = unique("SKU-KEEP"), unique("SKU-NEW")
    items = topic_reader("erp.erp.items")
    balances = topic_reader("wms.wms.inventory_balances")
    erp.execute("INSERT INTO erp.items (sku, description) VALUES (%s, 'kept')", (before_sku,))
    with wms.cursor() as cur:
        cur.execute("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-WEST', 1)",
                    (before_sku,))
    items.wait_for(lambda k, v: k == {"sku": before_sku})
    balances.wait_for(lambda k, v: k == {"sku": before_sku, "location": "DC-WEST"})
    items_mark, balances_mark = items.ends(), balances.ends()  # per partition: topics have several

    down = erpsync("stack", "down")
    assert down.returncode == 0, down.stderr
    assert "connect" in down.stdout and "postgres" in down.stdout
    up = erpsync("stack", "up")
    assert up.returncode == 0, up.stderr

    # The data survived, and the connectors go on from their offsets: new changes arrive and no
    # snapshot read (op "r") of the rows that were already captured is emitted again.
    e = settings.erp
    with psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                         password=e.password.get_secret_value(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM erp.items WHERE sku = %s", (before_sku,)).fetchone()
        conn.execute("INSERT INTO erp.items (sku, description) VALUES (%s, 'new')", (after_sku,))
    w = settings.wms
    conn2 = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                            database=w.dbname, autocommit=True)
    with conn2.cursor() as cur:
        cur.execute("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-WEST', 2)",
                    (after_sku,))
    conn2.close()

    items.wait_for(lambda k, v: k == {"sku": after_sku} and v and v["op"] == "c", timeout_s=60)
    balances.wait_for(lambda k, v: k == {"sku": after_sku, "location": "DC-WEST"} and v and v["op"] == "c",
                      timeout_s=60)
    for reader, mark in ((items, items_mark), (balances, balances_mark)):
        resnapshot = [r for r in reader.since(mark) if r[1] and r[1]["op"] == "r"]
        assert resnapshot == [], f"{reader.topic} was snapshotted again after restart"


def test_failed_component_is_named_with_its_log(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    env = dict(os.environ, ERPSYNC_STACK__HOME=str(tmp_path / "home"), ERPSYNC_REDIS__PORT=str(port),
               ERPSYNC_STACK__START_TIMEOUT_S="20")
    try:
        result = erpsync("stack", "up", env=env)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert "redis failed to start" in result.stderr
    assert str(tmp_path / "home" / "logs" / "redis.log") in result.stderr
    assert "Address already in use" in result.stderr  # the log's tail explains why


def test_status_shows_components_tasks_and_slot_lag(settings) -> None:  # type: ignore[no-untyped-def]
    result = erpsync("stack", "status")
    assert result.returncode == 0, result.stdout
    for component in ("redis", "postgres", "ops-db", "mariadb", "kafka", "connect", "registry"):
        assert re.search(rf"^{component} +healthy ", result.stdout, re.M), component
    registered = re.search(r"^  subjects registered: (\d+)$", result.stdout, re.M)
    assert registered and int(registered.group(1)) >= 17  # every schema of the contract under a subject
    assert "connector erp-postgres: RUNNING, tasks RUNNING" in result.stdout
    assert "connector wms-mariadb: RUNNING, tasks RUNNING" in result.stdout
    lag = [line for line in result.stdout.splitlines() if "replication slot erpsync_erp: lag" in line]
    assert lag and int(lag[0].split("lag ")[1].split()[0]) >= 0
