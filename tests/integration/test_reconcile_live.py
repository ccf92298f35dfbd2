"""Operations on the real stack: the workload's faults become exceptions of the right kind in the
ops database queue, and `erpsync reconcile` (reading the ERP and WMS directly) finds inventory
accurate, names every injected discrepancy, and reports a Redis value changed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from connectors import ops_db
from erpsync.reconcile import reconcile
from erpsync.settings import Settings
from erpsync.simulate import Manifest, Workload

from .conftest import Pipeline

pytestmark = pytest.mark.integration
KIND_OF_FAULT = {"short_shipment": "status_mismatch"}  # what the pipeline calls the workload's faults


@pytest.fixture(scope="module")
def drained(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Manifest]:
    """One workload run (seed 1: every kind of fault) through a pipeline with 1 s SLAs."""
    pipeline = Pipeline(tmp_path_factory.mktemp("ops"), ERPSYNC_FLOWS__CREDIT_SLA_S="1",
                        ERPSYNC_FLOWS__STATUS_GRACE_S="1").start()
    try:
        tag = f"K{int(time.time()) % 100000:05d}"
        with Workload(settings, seed=1, tag=tag, fault_rate=0.3, downstream_fault_rate=0.3,
                      return_rate=0.3) as work:
            manifest = work.run(orders=40, rate=20, timeout_s=240, ready_timeout_s=240)
            assert manifest.drained, manifest.summary()
            time.sleep(2.5)  # past the 1 s SLAs
            work.touch()
        expected = expected_exceptions(manifest)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not expected <= queue(settings, manifest.tag):
            time.sleep(0.5)
        yield manifest
    finally:
        pipeline.stop()


def expected_exceptions(manifest: Manifest) -> set[tuple[str, str]]:
    want = {(reason, key.replace(":", "/")) for key, reason in manifest.expected_rejections().items()}
    want |= {(KIND_OF_FAULT.get(f, f), key.replace(":", "/")) for key, f in manifest.downstream.items()}
    return want


def queue(settings: Settings, tag: str) -> set[tuple[str, str]]:
    """(kind, order key) of the open exceptions of this run in the ops database."""
    with ops_db.connect(settings) as conn:
        rows = conn.execute("SELECT kind, business_key FROM sync.exceptions WHERE business_key LIKE %s"
                            " AND state = 'open'", (f"%/{tag}-%",)).fetchall()
    return {(kind, "/".join(key.split("/")[:2])) for kind, key in rows}


def test_injected_faults_are_exceptions_of_the_right_kind(drained: Manifest, settings: Settings) -> None:
    found, want = queue(settings, drained.tag), expected_exceptions(drained)
    assert want <= found, sorted(want - found)
    clean = {k.replace(":", "/") for k in drained.expected_accepted() if k not in drained.downstream}
    assert not [f for f in found if f[1] in clean], "clean orders raise nothing"
    assert len({k for k, _ in want}) >= 8, "the run covers many kinds"


def test_reconcile_finds_inventory_accurate_and_names_every_injected_discrepancy(
        drained: Manifest, settings: Settings) -> None:
    tag = drained.tag
    report = reconcile(settings, sku_like=f"SKU-{tag}-%", order_like=f"{tag}-%")
    k = report.kpis
    assert k.inventory_pairs > 0 and k.inventory_accuracy_pct == 100.0, report.by_kind()
    named = {(f.kind, f.business_key) for f in report.findings if f.entity == "order"}
    for key, fault in drained.downstream.items():
        assert (fault, key.replace(":", "/")) in named, (fault, key)
    assert not [f for f in report.findings if f.entity == "availability"]
    assert k.invoices > 0 and k.invoices_with_discrepancy == sum(
        1 for f in drained.downstream.values() if f == "invoice_discrepancy")
    faulty = set(drained.expected_rejections()) | set(drained.downstream)
    assert k.orders == len(drained.orders) and k.orders_with_exceptions == len(faulty)
    assert k.sync_latency_ms["all"].p50_ms is not None and k.open_exceptions_by_kind
    assert report.run_id is not None


def test_a_redis_value_changed_by_hand_is_reported(drained: Manifest, settings: Settings,
                                                   store: redis.Redis) -> None:
    tag = drained.tag
    sku = sorted(k.decode() for k in store.hkeys("ats:b2b-portal") if k.decode().startswith(f"SKU-{tag}-"))[0]
    honest = store.hget("ats:b2b-portal", sku)
    store.hset("ats:b2b-portal", sku, "9999")  # tampered by hand, bypassing the fence
    try:
        cmd = [sys.executable, "-m", "erpsync", "reconcile", "--skus", f"SKU-{tag}-%", "--orders", f"{tag}-%",
               "--json", "--min-accuracy", "100"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        # progress on stderr (its last line: the steps and the time taken), the report alone on stdout
        assert "erpsync.progress: reconcile: 4 steps in " in result.stderr.splitlines()[-1], result.stderr
        doc: dict[str, Any] = json.loads(result.stdout)
        mismatches = [f for f in doc["findings"] if f["kind"] == "ats_mismatch_redis"]
        assert [(f["business_key"], f["actual"]) for f in mismatches] == [(f"b2b-portal/{sku}", 9999)]
        assert doc["kpis"]["inventory_accuracy_pct"] < 100
    finally:
        store.hset("ats:b2b-portal", sku, honest or b"0")
