"""``erpsync demo``: what erpsync does, on the local stack, in about a minute.

Starts the pipeline, makes ERP and WMS changes (one of them invalid), and shows each Debezium
change event, the canonical record it became, the dead-lettered record with its reason, and the
available-to-sell per channel that storefronts read from Redis. Then the reference workload
(``erpsync simulate``) sends channel orders, some faulty, and plays the ERP and the WMS: the demo
shows each order's status as channels read it and the exceptions the faults raised.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from connectors import ops_db
from connectors.redis import client as redis_client
from erpsync.channels import CHANNELS_DIR, configured_channels
from erpsync.commerce_api import CommerceApi
from erpsync.reconcile import reconcile, render
from erpsync.settings import Settings
from erpsync.simulate import Manifest, Workload
from erpsync.stack.connect import ConnectClient
from erpsync.stack.process import StackError
from erpsync.topics import Follower
from schemas.registry import SchemaRegistry, make_value_deserializer
from state.records import DLQ_TOPIC, EXCEPTIONS_TOPIC

RAW = ["erp.erp.items", "erp.erp.customers", "wms.wms.inventory_balances", "wms.wms.allocations"]
CANONICAL = ["canonical.item", "canonical.customer", "canonical.inventory-position", "canonical.allocation"]


def _changes(settings: Settings, tag: str) -> None:
    e, w = settings.erp, settings.wms
    with psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                         password=e.password.get_secret_value(), autocommit=True) as erp:
        erp.execute("INSERT INTO erp.customers VALUES (%s, %s, 'Demo Hardware Inc', 'PL-DEMO', 25000.00, false,"
                    " 'US-TX-AUSTIN', now())", (f"C-{tag}", f"A-{tag}"))
        erp.execute("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'Hex bolt M8', 10)",
                    (f"SKU-{tag}",))
        erp.execute("UPDATE erp.items SET safety_stock = 12 WHERE sku = %s", (f"SKU-{tag}",))
    wms = pymysql.connect(host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
                          database=w.dbname, autocommit=True)
    with wms.cursor() as cur:
        cur.execute("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-EAST', 120)",
                    (f"SKU-{tag}",))
        cur.execute("UPDATE inventory_balances SET on_hand = 95, allocated = 5 WHERE sku = %s", (f"SKU-{tag}",))
        # An invalid row: a status the WMS mapping does not know. It must reach the DLQ, not vanish.
        cur.execute("INSERT INTO allocations (order_id, line_no, sku, location, qty, status)"
                    " VALUES (1, 1, %s, 'DC-EAST', 5, 'misplaced')", (f"SKU-{tag}",))
    wms.close()


def _read(settings: Settings, topics: list[str], tag: str, expected: int, timeout_s: float,
          since_ms: int | None = None) -> list[Any]:
    """Records of `topics` that mention `tag`, written since `since_ms` (default: the last 10 minutes).

    On a fresh stack a raw topic appears with its table's first change, after this starts: the
    reader picks topics up as they appear.
    """
    since_ms = since_ms if since_ms is not None else int(time.time() * 1000) - 600_000
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    with Follower(settings, topics, since_ms=since_ms, group=f"demo-{tag}") as reader:
        while len(out) < expected and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None:
                continue
            if tag in (msg.key() or b"").decode() or tag in (msg.value() or b"").decode("utf-8", "replace"):
                out.append(msg)
    return out


def _connector_problems(settings: Settings) -> list[str]:
    """Debezium connectors or tasks that are not RUNNING, with the first line of their error."""
    client = ConnectClient.of(settings.connect)
    problems = []
    try:
        for name in client.states():
            status = client.status(name) or {}
            for part in [status.get("connector", {}), *status.get("tasks", [])]:
                if part.get("state") != "RUNNING":
                    trace = (part.get("trace") or "").strip().splitlines()
                    problems.append(f"connector {name}: {part.get('state')}" + (f": {trace[0]}" if trace else ""))
    except (StackError, OSError) as exc:
        problems.append(f"Kafka Connect: {exc}")
    return problems


def _ats(settings: Settings, sku: str, timeout_s: float) -> dict[str, int | None]:
    """The storefront view: HGET ats:<channel> <sku> for every channel, once all have a value."""
    store = redis_client(settings, reader=True)
    channels = [c.id for c in configured_channels(settings)]
    deadline = time.monotonic() + timeout_s
    values: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        values = {c: None if (v := store.hget(f"ats:{c}", sku)) is None else int(v) for c in channels}
        if None not in values.values() and values.get("b2b-portal") == 78:
            break
        time.sleep(0.3)
    return values


def run_demo(settings: Settings, registry: SchemaRegistry, console: Console | None = None, *,
             orders: int = 40, rate: float = 4.0) -> int:
    console = console or Console()
    tag = f"DEMO{secrets.token_hex(2).upper()}"
    work = Path(tempfile.mkdtemp(prefix="erpsync-demo-"))
    # Short SLAs, so that the demo's returns without credit memos and short shipments show up as
    # exceptions within the minute (defaults: hours).
    env = dict(os.environ, ERPSYNC_FLOWS__RECOVERY_DIR=str(work / "recovery"), ERPSYNC_FLOWS__CREDIT_SLA_S="2",
               ERPSYNC_FLOWS__STATUS_GRACE_S="2", ERPSYNC_FLOWS__ALLOCATION_SLA_S="60")
    api = _push_setup(work, env)  # the marketplace pushes to a commerce API process (HTTP push)
    console.rule("[bold]erpsync demo")
    console.print("Starting the pipeline ([cyan]erpsync run[/]) against the local stack ...")
    log = (work / "run.log").open("wb")
    pipeline = subprocess.Popen([sys.executable, "-m", "erpsync", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        console.print(f"Changing the ERP (PostgreSQL) and the WMS (MariaDB), keys tagged [bold]{tag}[/] ...")
        _changes(settings, tag)
        raw = _read(settings, RAW, tag, expected=6, timeout_s=60)
        table = Table(title="1. Debezium change events (raw topics)")
        for col in ("topic", "op", "key", "row after the change"):
            table.add_column(col)
        for msg in raw:
            env_ = json.loads(msg.value()) if msg.value() else {}
            after = env_.get("after") or {}
            table.add_row(msg.topic(), env_.get("op", "-"), (msg.key() or b"").decode(),
                          ", ".join(f"{k}={v}" for k, v in list(after.items())[:5]))
        console.print(table)

        canonical = _read(settings, CANONICAL, tag, expected=5, timeout_s=60)
        deserialize = make_value_deserializer(registry, settings.kafka.schema_registry_url)
        table = Table(title="2. Canonical Avro events (canonical.* topics)")
        for col in ("topic", "op", "key", "source position", "fields"):
            table.add_column(col)
        for msg in canonical:
            _, value = deserialize(msg.topic(), msg.value())
            fields = {k: v for k, v in value.items() if k not in ("event_id", "op", "source") and v is not None}
            table.add_row(msg.topic(), value["op"], (msg.key() or b"").decode(), value["source"]["position"],
                          ", ".join(f"{k}={v}" for k, v in list(fields.items())[:5]))
        console.print(table)

        dead = _read(settings, [DLQ_TOPIC], tag, expected=1, timeout_s=30)
        table = Table(title="3. Dead-letter queue (sync.dlq): nothing is dropped silently")
        for col in ("from", "reason"):
            table.add_column(col)
        for msg in dead:
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            table.add_row(f"{headers.get('topic')}@{headers.get('offset')}", headers.get("reason", "?"))
        console.print(table)

        ats = _ats(settings, f"SKU-{tag}", timeout_s=60)
        table = Table(title=f"4. Available-to-sell of SKU-{tag} (Redis HGET ats:<channel>, what storefronts read)")
        for col in ("channel", "ats", "how"):
            table.add_column(col)
        for channel, ats_value in ats.items():
            how = {"marketplace": "DC-EAST only, 80% share", "inside-sales": "all locations + in transit"}.get(
                channel, "all locations")
            table.add_row(channel, str(ats_value), f"(on hand 95 - allocated 5) - safety stock 12, {how}")
        console.print(table)

        manifest = _orders(settings, registry, console, tag, orders, rate)
        pushed = _push_view(settings, console, api, f"SKU-{tag}", manifest.tag)
    finally:
        pipeline.send_signal(signal.SIGINT)
        try:
            pipeline.wait(20)
        except subprocess.TimeoutExpired:
            pipeline.kill()
        api.stop()
    checks = {"raw events": len(raw) >= 6, "canonical records": len(canonical) >= 5, "dead letter": len(dead) >= 1,
              "ATS in Redis": None not in ats.values(), "orders finished": manifest.drained, "HTTP push": pushed}
    ok = all(checks.values())
    if not ok:
        console.print(f"[red]missing: {', '.join(name for name, good in checks.items() if not good)}")
        for problem in _connector_problems(settings):
            console.print(f"[red]{problem}")
    log.close()
    console.rule("[green]demo complete" if ok else "[red]demo incomplete: see " + str(work / "run.log"))
    if ok:  # the pipeline's log and recovery snapshots are only worth keeping for a diagnosis
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _orders(settings: Settings, registry: SchemaRegistry, console: Console, tag: str, orders: int,
            rate: float) -> Manifest:
    """The reference workload's channel orders through intake, the ERP and the WMS, watched live."""
    console.print(f"Sending {orders} channel orders (some faulty) at {rate:g}/s and playing the ERP and the WMS "
                  "([cyan]erpsync simulate[/]); the view below refreshes as the pipeline publishes ...")
    work = Workload(settings, seed=29, tag=f"O{tag[4:]}", fault_rate=0.3, downstream_fault_rate=0.3,
                    return_rate=0.2, max_orders=max(1000, orders))
    result: dict[str, Manifest] = {}

    def play() -> None:
        try:
            result["manifest"] = work.run(orders=orders, rate=rate, timeout_s=120, ready_timeout_s=120)
            time.sleep(3)  # past the demo's 2 s SLAs
            work.touch()
        finally:
            work.close()

    player = threading.Thread(target=play, name="workload", daemon=True)
    player.start()
    view = _View(settings, work.scenario.tag, [i.sku for i in work.scenario.catalog.items])
    with Live(view.render(), console=console, refresh_per_second=4) as live:
        settle_until = None
        while True:
            live.update(view.render())
            if not player.is_alive():
                settle_until = settle_until or time.monotonic() + 6  # exceptions after the SLAs, final statuses
                if time.monotonic() > settle_until or view.settled(result.get("manifest")):
                    live.update(view.render())
                    break
            time.sleep(0.5)
    view.close()
    manifest = result.get("manifest") or work.manifest
    if not manifest.drained:
        console.print(f"[red]the workload did not finish: {manifest.summary()}")
    found = _read(settings, [EXCEPTIONS_TOPIC], manifest.tag, expected=10**6, timeout_s=3)
    deserialize = make_value_deserializer(registry, settings.kafka.schema_registry_url)
    table = Table(title="6. Exceptions raised (sync.exceptions): classified, with the business key")
    for col in ("kind", "business key", "reason"):
        table.add_column(col)
    for msg in found:
        _, value = deserialize(msg.topic(), msg.value())
        table.add_row(value["kind"], value["business_key"], value["reason"])
    console.print(table)

    console.print("Reconciling: the ERP and the WMS read directly vs what channels were told "
                  "([cyan]erpsync reconcile[/]) ...")
    report = reconcile(settings, sku_like=f"SKU-{manifest.tag}-%", order_like=f"{manifest.tag}-%")
    console.print(render(report))
    return manifest


class _View:
    """The live dashboard for the workload's tag.

    ATS per SKU and channel (Redis), order statuses and recent orders, open exceptions by kind
    (ops database) and sync latency.
    """

    def __init__(self, settings: Settings, tag: str, skus: list[str]) -> None:
        self.settings, self.tag, self.skus = settings, tag, skus[:8]
        self.channels = [c.id for c in configured_channels(settings)]
        self.store = redis_client(settings, reader=True)
        self.conn = ops_db.connect(settings, autocommit=True)  # one connection for every refresh

    def close(self) -> None:
        self.conn.close()
        self.store.close()

    def settled(self, manifest: Manifest | None) -> bool:
        if manifest is None:
            return False
        statuses = self._statuses()
        done = sum(n for s, n in statuses.items() if s in ("invoiced", "rejected"))
        return done >= len(manifest.orders)

    def _statuses(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, count(*) FROM sync.order_status WHERE external_order_id"
                                      " LIKE %s GROUP BY status", (f"{self.tag}-%",)).fetchall())

    def render(self) -> Group:
        ats = Table(title="ATS by SKU and channel (Redis: what storefronts read)", expand=False)
        ats.add_column("SKU")
        for c in self.channels:
            ats.add_column(c, justify="right")
        by_channel = [self.store.hmget(f"ats:{c}", self.skus) for c in self.channels]
        for i, sku in enumerate(self.skus):
            ats.add_row(sku, *[_text(values[i]) for values in by_channel])
        conn, like = self.conn, f"{self.tag}-%"
        statuses = self._statuses()
        recent = conn.execute(
            "SELECT channel, external_order_id, status, array_to_string(reasons, ', ') FROM sync.order_status"
            " WHERE external_order_id LIKE %s ORDER BY written_at DESC LIMIT 8", (like,)).fetchall()
        kinds = conn.execute(
            "SELECT kind, count(*) FROM sync.exceptions WHERE state = 'open' AND business_key LIKE %s"
            " GROUP BY kind ORDER BY kind", (f"%{self.tag}-%",)).fetchall()
        latency = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP"
            " (ORDER BY ms), count(*) FROM (SELECT extract(epoch FROM written_at) * 1000 - last_fact_ms AS ms"
            " FROM sync.order_status WHERE external_order_id LIKE %s UNION ALL"
            " SELECT extract(epoch FROM written_at) * 1000 - event_time_ms FROM sync.availability"
            " WHERE sku LIKE %s) t", (like, f"SKU-{self.tag}-%")).fetchone()
        order_table = Table(title="Order status (order-status.<channel>)")
        for col in (*STATUS_ORDER, ):
            order_table.add_column(col, justify="right")
        order_table.add_row(*[str(statuses.get(s, 0)) for s in STATUS_ORDER])
        recent_table = Table(title="Latest status updates")
        for col in ("channel", "order", "status", "reasons"):
            recent_table.add_column(col)
        for row in recent:
            recent_table.add_row(*[str(x) for x in row])
        exc_table = Table(title="Open exceptions by kind")
        exc_table.add_column("kind")
        exc_table.add_column("open", justify="right")
        for kind, n in kinds:
            exc_table.add_row(kind, str(n))
        p50, p99, n = latency or (None, None, 0)
        lat = (f"sync latency, source commit -> ops database write: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
               f"({n} writes)") if n and p50 is not None and p99 is not None else "sync latency: no writes yet"
        return Group(Columns([ats, exc_table]), order_table, recent_table, lat)


def _text(value: Any) -> str:
    return "-" if value is None else value.decode() if isinstance(value, bytes) else str(value)


STATUS_ORDER = ("received", "accepted", "allocated", "partially_shipped", "shipped", "invoiced", "rejected")


def _push_setup(work: Path, env: dict[str, str]) -> CommerceApi:
    """The reference channels with an HTTP push output added to the marketplace, and its platform running.

    The platform (erpsync.commerce_api) allows 10 requests/s and fails one request in ten with a 500,
    so the delivery status shows retries.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    api = CommerceApi(port, work / "commerce-api.jsonl", token=token, rate=10, burst=5, fail_rate=0.1).start()
    channels = work / "channels"
    shutil.copytree(CHANNELS_DIR, channels)
    with (channels / "marketplace.toml").open("a") as f:
        f.write(f"""
[outputs.push]
url = "{api.url}/webhook"
sends = ["availability", "order_status"]
auth = {{ type = "bearer", token_env = "DEMO_MARKETPLACE_TOKEN" }}
batch_size = 50
rate_per_s = 10
burst = 5
""")
    env.update(ERPSYNC_FLOWS__CHANNELS_DIR=str(channels), DEMO_MARKETPLACE_TOKEN=token)
    return api


def _push_view(settings: Settings, console: Console, api: CommerceApi, sku: str, order_tag: str) -> bool:
    """7. What the marketplace's commerce API received, and the delivery status (erpsync channels status)."""
    time.sleep(3)  # one status refresh (every 2 s) after the last values
    held = api.state()
    accepted = held["accepted"]
    table = Table(title="7. HTTP push: what the marketplace's commerce API holds (erpsync.commerce_api, "
                        "10 requests/s, 10% of requests fail)")
    for col in ("key", "value the platform holds", "writes"):
        table.add_column(col, overflow="fold")
    shipped = [k for k, v in accepted.items() if k.startswith(f"order_status/{order_tag}")
               and isinstance(v["value"], dict) and v["value"]["tracking_numbers"]]
    for key in [f"availability/{sku}", *sorted(shipped)[:4]]:
        if key in accepted:
            table.add_row(key, json.dumps(accepted[key]["value"]), str(accepted[key]["writes"]))
    console.print(table)
    from connectors.http_channels import status_rows  # noqa: PLC0415 - bytewax only when it is shown

    row = next((r for r in status_rows(settings) if r["channel"] == "marketplace"), None)
    status = Table(title="Delivery status of the marketplace push (erpsync channels status)")
    for col in ("breaker", "pending", "delivered", "latency p50/p99 ms", "requests/s", "errors by kind",
                "platform: requests by status"):
        status.add_column(col, overflow="fold")
    if row is not None:
        status.add_row(row["breaker"], str(row["pending"]), str(row["delivered"]),
                       f"{row['latency_p50_ms'] or 0:.0f}/{row['latency_p99_ms'] or 0:.0f}",
                       f"{row['requests_per_s']:.1f}",
                       ", ".join(f"{k} {n}" for k, n in sorted(row["errors"].items())) or "none",
                       ", ".join(f"{k} {n}" for k, n in sorted(held["by_status"].items())))
    console.print(status)
    return row is not None and row["delivered"] > 0 and f"availability/{sku}" in accepted
