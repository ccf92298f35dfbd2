"""Push delivery against a real commerce API process and the ops database (no pipeline: values handed in).

The pipeline-level scenario (500 changes/s, failures, an outage) is test_push_live.py.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors import http_channels, ops_db
from connectors.http_channels import Engine
from erpsync.commerce_api import CommerceApi
from erpsync.settings import PushSettings, Settings
from state import exception_id
from state.availability import AVAILABILITY_SCHEMA
from state.channels import Channel
from state.order_status import ORDER_STATUS_SCHEMA
from state.records import Emit

pytestmark = pytest.mark.integration
TOKEN = "tok-" + uuid.uuid4().hex  # what the server expects; must never show up in a log or an exception


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def api(tmp_path: Path) -> Iterator[CommerceApi]:
    server = CommerceApi(free_port(), tmp_path / "api.jsonl", token=TOKEN)
    yield server
    server.stop()


def make_channel(api: CommerceApi, **push: Any) -> Channel:
    path = "/stores/abc/v3/inventory/adjustments/absolute" if push.get("format") == "bigcommerce" else "/webhook"
    return Channel.model_validate({"id": f"push-{uuid.uuid4().hex[:8]}", "outputs": {"push": {
        "url": api.url + path, "auth": {"type": "bearer", "token_env": "SHOP_TOKEN"}, **push}}})


def av(channel: str, sku: str, ats: int, version: int) -> Emit:
    return Emit(f"availability.{channel}", sku, AVAILABILITY_SCHEMA, {
        "channel": channel, "sku": sku, "ats": ats, "on_hand": ats, "allocated": 0, "in_transit": 0,
        "committed_open": 0, "intake_reserved": 0, "safety_stock": 0, "network": ats, "status": "active",
        "positions": {"wms": f"{version:012d}"}, "version": version, "event_time_ms": int(time.time() * 1000),
        "published_at_ms": int(time.time() * 1000)})


def store(settings: Settings, emits: list[Emit]) -> None:
    """What the pipeline's ops database sink writes for the same records (sync.availability)."""
    with ops_db.connect(settings) as conn:
        with conn.cursor() as cur:
            cur.executemany(ops_db._UPSERT_AVAILABILITY, [ops_db.availability_row(e.value) for e in emits])
        conn.commit()


def engine(settings: Settings, *channels: Channel) -> Engine:
    return Engine(settings, channels, None, environ={"SHOP_TOKEN": TOKEN}).start()


def wait_drained(e: Engine, channel: str, timeout_s: float = 60) -> dict[str, Any]:
    d = e.deliveries[channel]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = d.status()
        if st["pending"] == 0 and st["in_flight"] == 0:
            return st
        time.sleep(0.2)
    pytest.fail(f"channel {channel} not drained within {timeout_s}s: {d.status()}")


def test_throttled_requests_wait_retry_after_and_every_value_arrives(settings: Settings, api: CommerceApi) -> None:
    # The channel file claims more than the platform allows, and the platform sends no rate-limit
    # headers until it throttles: its 429s must slow the channel down. One request at a time, so
    # that every request after a 429 was sent after it was answered.
    api.start(rate=4, burst=2, quiet_limits=True)
    ch = make_channel(api, rate_per_s=40, burst=8, batch_size=5, concurrency=1)
    e = engine(settings, ch)
    try:
        e.offer([av(ch.id, f"S{n:03d}", 10 + n, 1) for n in range(60)])
        wait_drained(e, ch.id)
    finally:
        e.stop()
    state = api.state()
    log = sorted(state["request_log"], key=lambda r: r["t"])
    throttled = [r for r in log if r["status"] == 429]
    assert throttled, "the platform never throttled: the test proves nothing"
    for r in throttled:  # Retry-After is at least 1 s: nothing may arrive before it passed
        early = [round(x["t"] - r["t"], 3) for x in log if r["t"] < x["t"] < r["t"] + 0.98]
        assert not early, f"requests {early}s after a 429 with Retry-After"
    assert {k: v["value"] for k, v in state["accepted"].items()} == {
        f"availability/S{n:03d}": 10 + n for n in range(60)}


def test_rejection_becomes_an_exception_then_replays_after_a_fix(settings: Settings, api: CommerceApi,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.start(rate=50, burst=10, reject_skus="BAD-1")
    ch = make_channel(api, batch_size=8, rate_per_s=50, burst=10)
    values = [av(ch.id, f"OK-{n}", n, 1) for n in range(15)] + [av(ch.id, "BAD-1", 42, 1)]
    store(settings, values)
    # rescans every second: how a running pipeline picks up a replayed rejection (default 30 s)
    e = engine(settings.model_copy(update={"push": PushSettings(rescan_s=1)}), ch)
    try:
        e.offer(values)
        wait_drained(e, ch.id)
        accepted = api.state()["accepted"]
        assert set(accepted) == {f"availability/OK-{n}" for n in range(15)}  # the batch was split around BAD-1
        with ops_db.connect(settings) as conn:
            row = conn.execute("SELECT id, state, reason, detail FROM sync.exceptions WHERE kind = 'channel_rejected'"
                               " AND business_key = %s", (f"{ch.id}/BAD-1",)).fetchone()
        assert row is not None, "no channel_rejected exception"
        exc_id, state, reason, detail = row
        assert state == "open" and "HTTP 422" in reason and "BAD-1" in reason
        assert detail["response"]["status"] == 422 and "not found" in detail["response"]["body"]
        assert json.loads(detail["request"]["body"])["availability"][0]["sku"] == "BAD-1"
        assert detail["request"]["headers"]["Idempotency-Key"]
        assert TOKEN not in json.dumps(detail) and TOKEN not in caplog.text  # credentials never recorded
        requests_before = api.state(summary=True)["requests"]
        time.sleep(1)
        assert api.state(summary=True)["requests"] == requests_before  # a rejection is not retried by itself

        api.control(reject_skus=[])  # the fix (on the platform's side here)
        assert http_channels.replay_rejected(settings, exc_id) == 1
        deadline = time.monotonic() + 20
        while "availability/BAD-1" not in api.state()["accepted"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.state()["accepted"]["availability/BAD-1"]["value"] == 42
        with ops_db.connect(settings) as conn:
            assert conn.execute("SELECT state FROM sync.exceptions WHERE id = %s", (exc_id,)).fetchone() == (
                "replayed",)
    finally:
        e.stop()


def test_after_a_restart_what_is_owed_is_rederived_and_nothing_older_is_sent(settings: Settings,
                                                                            api: CommerceApi) -> None:
    api.start(rate=50, burst=10)
    ch = make_channel(api, batch_size=10, rate_per_s=50, burst=10, timeout_s=1, breaker_reset_s=1)
    first = [av(ch.id, f"S{n}", 100 + n, 1) for n in range(20)]
    store(settings, first)
    e = engine(settings, ch)
    e.offer(first)
    wait_drained(e, ch.id)
    api.stop()  # the platform goes down; newer values are owed, then the process dies with them in memory
    second = [av(ch.id, f"S{n}", 200 + n, 2) for n in range(20)]
    store(settings, second)
    e.offer(second)
    time.sleep(1.5)
    assert e.deliveries[ch.id].status()["owed_keys"] == 20
    e.stop()

    api.start()
    e2 = engine(settings, ch)  # a fresh process: nothing in memory
    try:
        # a redelivery of the old values (bytewax resumes from its last snapshot) must not be sent
        e2.offer(first)
        wait_drained(e2, ch.id)
    finally:
        e2.stop()
    state = api.state()
    assert {k: v["value"] for k, v in state["accepted"].items()} == {f"availability/S{n}": 200 + n for n in range(20)}
    assert state["older_writes"] == []
    assert all(v["writes"] == 2 for v in state["accepted"].values())  # first value, then the newer one, once each


def test_order_status_with_tracking_and_bigcommerce_inventory(settings: Settings, api: CommerceApi,
                                                              tmp_path: Path) -> None:
    api.start(rate=50, burst=10)
    hook = make_channel(api, sends=["availability", "order_status"])
    big = Channel.model_validate({"id": f"big-{uuid.uuid4().hex[:8]}", "outputs": {"push": {
        "url": api.url + "/stores/abc/v3/inventory/adjustments/absolute", "format": "bigcommerce",
        "location_id": 2, "auth": {"type": "header", "token_env": "SHOP_TOKEN"}}}})
    e = engine(settings, hook, big)
    try:
        status = {"channel": hook.id, "external_order_id": "EXT-9", "order_id": 9, "status": "shipped",
                  "reasons": [], "lines": [{"line_no": 1, "sku": "A", "ordered": 1, "allocated": 1, "shipped": 1}],
                  "carriers": ["UPS"], "tracking_numbers": ["1Z42"], "last_fact_ms": 1, "version": 3}
        e.offer([Emit(f"order-status.{hook.id}", "EXT-9", ORDER_STATUS_SCHEMA, status), av(hook.id, "A", 5, 1),
                 av(big.id, "B", 7, 1)])
        wait_drained(e, hook.id)
        wait_drained(e, big.id)
    finally:
        e.stop()
    accepted = api.state()["accepted"]
    assert accepted["order_status/EXT-9"]["value"] == {"status": "shipped", "carriers": ["UPS"],
                                                       "tracking_numbers": ["1Z42"]}
    assert accepted["availability/A"]["value"] == 5
    assert accepted["availability/B"]["value"] == 7 and accepted["availability/B"]["fence"] is None  # BigCommerce


def test_a_dead_channel_slows_neither_the_dataflow_nor_other_channels(settings: Settings, api: CommerceApi,
                                                                      tmp_path: Path) -> None:
    api.start(rate=100, burst=20)
    hung = CommerceApi(free_port(), tmp_path / "hung.jsonl", token=TOKEN).start(hang_rate=1.0, hang_s=30)
    try:
        good = make_channel(api, rate_per_s=100, burst=20, batch_size=50)
        bad = Channel.model_validate({"id": f"hung-{uuid.uuid4().hex[:8]}", "outputs": {"push": {
            "url": hung.url + "/webhook", "timeout_s": 2, "auth": {"type": "bearer", "token_env": "SHOP_TOKEN"}}}})
        e = engine(settings, good, bad)
        try:
            rounds = [[av(c.id, f"S{n}", round_ * 10_000 + n, round_) for c in (good, bad) for n in range(2000)]
                      for round_ in range(1, 11)]  # 10 rounds x 2,000 keys for each channel
            slowest = 0.0
            for records in rounds:
                t0 = time.monotonic()
                e.offer(records)
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.3)  # requests to the hung platform are in flight meanwhile
            st = wait_drained(e, good.id, timeout_s=60)
            deadline = time.monotonic() + 30
            while not e.deliveries[bad.id].status()["errors"].get("timeout") and time.monotonic() < deadline:
                time.sleep(0.2)
            bad_st = e.deliveries[bad.id].status()
        finally:
            e.stop()
    finally:
        hung.stop()
    # a sink that waited on the hung platform would take its 2 s timeout at least
    assert slowest < 1.0, f"handing 4,000 records over took {slowest:.2f}s"
    # one value waiting per key (beside the one a hung request carries), not ten rounds of them
    assert bad_st["owed_keys"] == 2000 and bad_st["pending"] <= 2000
    assert bad_st["errors"].get("timeout", 0) >= 1
    assert st["latency_p99_ms"] is not None and st["latency_p99_ms"] < 5_000
    accepted = api.state()["accepted"]
    assert all(accepted[f"availability/S{n}"]["value"] == 100_000 + n for n in range(2000))


def test_refused_credentials_are_one_channel_exception_and_values_stay_owed(settings: Settings,
                                                                            api: CommerceApi) -> None:
    api.start(rate=50, burst=10)
    ch = make_channel(api, breaker_reset_s=1)
    e = Engine(settings, [ch], None, environ={"SHOP_TOKEN": "not-the-token"}).start()
    try:
        e.offer([av(ch.id, f"S{n}", n, 1) for n in range(30)])
        exc_id = exception_id("channel_rejected", "channel", f"{ch.id}/credentials")
        deadline = time.monotonic() + 20
        while one_exception(settings, exc_id) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        state, reason, detail = one_exception(settings, exc_id)
        assert state == "open" and "HTTP 401" in reason and detail["credentials_from"] == ["SHOP_TOKEN"]
        assert "not-the-token" not in json.dumps(detail)
        assert e.deliveries[ch.id].owed_keys() == 30  # nothing rejected, nothing lost
        api.stop()
        api.start(token="not-the-token")  # the fix: the platform and the channel agree again
        wait_drained(e, ch.id, timeout_s=30)
        deadline = time.monotonic() + 10
        while one_exception(settings, exc_id)[0] != "resolved" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert one_exception(settings, exc_id)[0] == "resolved"
    finally:
        e.stop()
    assert len(api.state()["accepted"]) == 30


def one_exception(settings: Settings, exc_id: str) -> Any:
    with ops_db.connect(settings) as conn:
        return conn.execute("SELECT state, reason, detail FROM sync.exceptions WHERE id = %s", (exc_id,)).fetchone()


METRICS_SCRIPT = """
import json, sys, time
from pathlib import Path
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
from connectors.http_channels import Engine
from erpsync.commerce_api import CommerceApi
from erpsync.settings import load_settings
from state.channels import Channel
from state.availability import AVAILABILITY_SCHEMA
from state.records import Emit
port, journal, channel = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
api = CommerceApi(port, journal, rate=50, burst=10, fail_rate=0.3, seed=7).start()
ch = Channel.model_validate({"id": channel, "outputs": {"push": {"url": api.url + "/webhook", "batch_size": 5,
                                                                 "rate_per_s": 50, "burst": 10}}})
e = Engine(load_settings(), [ch], None).start()
now = int(time.time() * 1000)
e.offer([Emit("t", f"S{n}", AVAILABILITY_SCHEMA, {"channel": channel, "sku": f"S{n}", "ats": n, "status": "active",
         "positions": {"wms": "1"}, "version": 1, "event_time_ms": now}) for n in range(50)])
d = e.deliveries[channel]
while sum(d.counts()):
    time.sleep(0.1)
out = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            for p in m.data.data_points:
                attrs = dict(p.attributes)
                if attrs.get("channel") != channel and attrs.get("topic") != channel:
                    continue
                key = m.name + "|" + ",".join(f"{k}={v}" for k, v in sorted(attrs.items()) if k != "channel")
                out[key] = getattr(p, "value", None) if hasattr(p, "value") else p.count
e.stop()
api.stop()
print(json.dumps(out))
"""


def test_push_metrics_reach_opentelemetry(settings: Settings, tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    channel = f"otel-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, "-c", METRICS_SCRIPT, str(free_port()), str(tmp_path / "api.jsonl"),
                           channel], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["erpsync.channel.delivered|kind=availability"] == 50
    assert got["erpsync.channel.latency|"] == 50  # one latency per value delivered
    assert got["erpsync.channel.requests|outcome=ok"] >= 10  # 50 values in batches of 5
    assert got.get("erpsync.channel.requests|outcome=http_5xx", 0) > 0  # 30% of requests failed
    assert got["erpsync.sync.latency|sink=push,topic=" + channel] == 50
    assert got["erpsync.channel.pending|"] == 0 and got["erpsync.channel.breaker|"] == 0
