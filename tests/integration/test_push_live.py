"""HTTP push on the live stack: `erpsync run` pushes availability to a commerce API process.

500 WMS changes/s over 200 SKUs for 60 s, the platform failing 10% of requests with 500 and
hanging 2%, one SKU it does not know, and a 30 s outage in the middle. Every SKU's final ATS must
reach the platform, no request may exceed its rate limit, no key may be overwritten by an older
value, the breaker must open and close, and the exceptions must say what happened; a rejection
must be replayable after the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors import ops_db
from erpsync.channels import CHANNELS_DIR, load_channels
from erpsync.commerce_api import CommerceApi
from erpsync.reconcile import reconcile
from erpsync.settings import Settings
from schemas.registry import SchemaRegistry, make_value_deserializer
from state import exception_id
from state.records import EXCEPTIONS_TOPIC

from .conftest import Pipeline, read_to_end
from .test_push_delivery import free_port

pytestmark = [pytest.mark.integration, pytest.mark.last]

SKUS = 200
RATE = 500  # WMS changes per second
SECONDS = 60
OUTAGE = (15, 45)  # seconds into the run: the platform is down
BASE = 1000
API_RATE, API_BURST = 20, 10


def test_push_under_load_failures_and_an_outage(settings: Settings, erp, wms, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                store: redis.Redis) -> None:
    tag = f"PUSH{uuid.uuid4().hex[:6].upper()}"
    channel = f"push-{tag.lower()[4:]}"
    skus = [f"SKU-{tag}-{i:04d}" for i in range(SKUS)]
    unknown = skus[-1]  # the platform does not know it: 422 until it does
    token = uuid.uuid4().hex
    api = CommerceApi(free_port(), tmp_path / "api.jsonl", token=token, rate=API_RATE, burst=API_BURST,
                      fail_rate=0.1, hang_rate=0.02, hang_s=10, reject_skus=unknown).start()
    channels_dir = tmp_path / "channels"
    shutil.copytree(CHANNELS_DIR, channels_dir)
    (channels_dir / f"{channel}.toml").write_text(f"""
id = "{channel}"

[outputs]
kafka = false
redis = true

[outputs.push]
url = "{api.url}/webhook"
sends = ["availability"]
format = "webhook"
auth = {{ type = "bearer", token_env = "PUSH_TEST_TOKEN" }}
batch_size = 50
rate_per_s = {API_RATE}
burst = {API_BURST}
timeout_s = 2
breaker_failures = 5
breaker_reset_s = 5
""")
    channels = load_channels(channels_dir)
    with erp.cursor() as cur:
        cur.executemany("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'push', 0)",
                        [(s,) for s in skus])
    with wms.cursor() as cur:
        cur.executemany("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-EAST', %s)",
                        [(s, BASE) for s in skus])
    started_ms = int(time.time() * 1000)
    pipeline = Pipeline(tmp_path, ERPSYNC_FLOWS__CHANNELS_DIR=str(channels_dir), PUSH_TEST_TOKEN=token,
                        ERPSYNC_PUSH__RESCAN_S="5").start()
    try:
        wait_until(lambda: all(api.state()["accepted"].get(f"availability/{s}", {}).get("value") == BASE
                               for s in skus[:-1]), 240, "the initial values on the platform")
        final, backlog = drive(settings, wms, skus, api, channel)
        expected = {s: final[s] for s in skus}

        def delivered() -> dict[str, Any]:
            accepted = api.state()["accepted"]
            return {s: accepted.get(f"availability/{s}", {}).get("value") for s in skus}

        wait_until(lambda: {s: v for s, v in delivered().items() if s != unknown} == {
            s: v for s, v in expected.items() if s != unknown}, 120, "every SKU's final ATS on the platform")
        assert store.hmget(f"ats:{channel}", skus[:3]) == [str(expected[s]).encode() for s in skus[:3]]

        # the backlog while the platform was down: at most one value waiting per key changed (about
        # 15,000 changes to 200 SKUs during the outage)
        assert backlog, "no status sample during the outage"
        assert max(backlog) > 50, f"no backlog built up during the outage ({backlog}): the test proves nothing"
        assert max(backlog) <= SKUS, backlog

        state = api.state()
        log = sorted(state["request_log"], key=lambda r: r["t"])
        assert "429" not in state["by_status"], state["by_status"]  # never over the platform's limit
        times = [r["t"] for r in log]
        worst = max(sum(1 for u in times[i:i + 200] if u < t + 1.0) for i, t in enumerate(times))
        assert worst <= API_RATE + API_BURST, f"{worst} requests within one second"
        assert state["older_writes"] == []  # no key ever overwritten by an older value
        assert state["by_status"].get("500", 0) > 0 and state["by_status"].get("0", 0) > 0  # faults happened

        # the breaker opened (once) and closed: channel_unavailable raised and resolved
        down_id = exception_id("channel_unavailable", "channel", channel)
        records = [v for v in exceptions_since(settings, started_ms) if v["id"] == down_id]
        assert [r["state"] for r in records][:1] == ["open"] and records[-1]["state"] == "resolved", records
        assert sum(r["state"] == "open" for r in records) == 1  # raised once, not per failed probe
        assert "consecutive failures" in records[0]["reason"]
        assert "available again after" in records[-1]["reason"]
        assert json.loads(records[-1]["detail"])["down_s"] >= OUTAGE[1] - OUTAGE[0] - 10
        row = one(settings, "SELECT state, occurrences FROM sync.exceptions WHERE id = %s", down_id)
        assert row == ("resolved", 1)

        # the unknown SKU: a channel_rejected exception with the request and the response
        rejected_id = exception_id("channel_rejected", "availability", f"{channel}/{unknown}")
        reason, detail = one(settings, "SELECT reason, detail FROM sync.exceptions WHERE id = %s", rejected_id)
        assert "HTTP 422" in reason and unknown in reason
        assert detail["response"]["status"] == 422 and unknown in detail["request"]["body"]
        assert token not in json.dumps(detail)
        assert delivered()[unknown] is None

        status = cli(tmp_path, channels_dir, "channels", "status", "--json")
        mine = next(r for r in json.loads(status) if r["channel"] == channel)
        assert mine["breaker"] == "closed" and mine["delivered"] >= SKUS - 1
        assert {"http_5xx", "timeout", "connect", "rejected"} <= set(mine["errors"]), mine["errors"]
        assert mine["latency_p50_ms"] is not None and mine["rejected_keys"] == 1

        # the fix, then a replay from the exception queue: the SKU's newest value goes out
        api.control(reject_skus=[])
        assert "1 key(s) released" in cli(tmp_path, channels_dir, "channels", "replay", rejected_id)
        wait_until(lambda: delivered()[unknown] == expected[unknown], 60, "the replayed SKU on the platform")

        report = reconcile(settings, sku_like=f"SKU-{tag}-%", channels=channels, store=False)
        assert [f for f in report.findings if f.kind == "channel_mismatch"] == []
        with ops_db.connect(settings) as conn:  # a value the platform holds, made wrong
            conn.execute("UPDATE sync.channel_deliveries SET acked_ats = acked_ats + 1 WHERE channel = %s AND key = %s",
                         (channel, skus[0]))
            conn.commit()
        report = reconcile(settings, sku_like=f"SKU-{tag}-%", channels=channels, store=False)
        assert [(f.kind, f.business_key) for f in report.findings if f.kind == "channel_mismatch"] == [
            ("channel_mismatch", f"{channel}/{skus[0]}")]
    finally:
        pipeline.stop()
        api.stop()


def drive(settings: Settings, wms: Any, skus: list[str], api: CommerceApi,
          channel: str) -> tuple[dict[str, int], list[int]]:
    """RATE updates/s for SECONDS, the platform down during OUTAGE; (final on_hand per SKU, backlog samples)."""
    values = {s: BASE for s in skus}
    backlog: list[int] = []
    stop = threading.Event()
    down = threading.Event()

    def sample() -> None:
        with ops_db.connect(settings, autocommit=True) as conn:
            while not stop.wait(1.0):
                if down.is_set():
                    row = conn.execute("SELECT pending FROM sync.channel_status WHERE channel = %s"
                                       " AND updated_at > now() - interval '3 seconds'", (channel,)).fetchone()
                    if row:
                        backlog.append(int(row[0]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    n = 0
    with wms.cursor() as cur:
        while (now := time.monotonic()) - start < SECONDS:
            if OUTAGE[0] <= now - start < OUTAGE[1] and not down.is_set():
                api.stop()
                down.set()
            elif now - start >= OUTAGE[1] and down.is_set():
                api.start()
                down.clear()
            target = start + n / RATE
            if now < target:
                time.sleep(target - now)
            # ten changes a transaction (one each does not keep up on a shared machine), more when behind
            due = min(100, max(10, int((time.monotonic() - start) * RATE) - n))
            wms.begin()
            for _ in range(due):
                sku = skus[n % len(skus)]
                values[sku] += 1 + n % 3
                cur.execute("UPDATE inventory_balances SET on_hand = %s WHERE sku = %s AND location = 'DC-EAST'",
                            (values[sku], sku))
                n += 1
            wms.commit()
    stop.set()
    sampler.join()
    assert n >= RATE * SECONDS * 0.9, f"only {n} changes in {SECONDS} s"
    return values, backlog


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"not within {timeout_s:.0f}s: {what}")


def one(settings: Settings, sql: str, *args: Any) -> Any:
    with ops_db.connect(settings) as conn:
        return conn.execute(sql, args).fetchone()


def exceptions_since(settings: Settings, since_ms: int) -> list[dict[str, Any]]:
    deserialize = make_value_deserializer(SchemaRegistry.load(), settings.kafka.schema_registry_url)
    return [deserialize(m.topic() or "", m.value() or b"")[1]
            for m in read_to_end(settings, [EXCEPTIONS_TOPIC], since_ms=since_ms)]


def cli(tmp_path: Path, channels_dir: Path, *args: str) -> str:
    env = dict(os.environ, ERPSYNC_FLOWS__CHANNELS_DIR=str(channels_dir))
    done = subprocess.run([sys.executable, "-m", "erpsync", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout
