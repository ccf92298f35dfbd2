"""The worked example of schemas/mappings/README.md, run as written: a new ERP table end to end.

It copies the example's schema, mapping and DDL beside the packaged ones, runs `erpsync mappings
check` on them, then replays the example's hand-written Debezium envelopes through the whole
production pipeline (one worker and two).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from erpsync import runner
from erpsync.settings import FlowSettings, Settings
from schemas.mapping import MAPPINGS_DIR
from schemas.registry import SCHEMA_DIR, SchemaRegistry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = MAPPINGS_DIR / "example"
FILES = ("erp.suppliers.postgres.sql", "supplier.avsc", "erp.suppliers.toml", "erp.suppliers.jsonl")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The packaged contract, mappings and reference DDL, plus the example's three files."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "avro")
    shutil.copy(EXAMPLE / "supplier.avsc", tmp_path / "avro")
    (tmp_path / "mappings").mkdir()
    for path in [*MAPPINGS_DIR.glob("*.toml"), EXAMPLE / "erp.suppliers.toml"]:
        shutil.copy(path, tmp_path / "mappings")
    (tmp_path / "reference").mkdir()
    for path in [*(ROOT / "reference").glob("*.sql"), EXAMPLE / "erp.suppliers.postgres.sql"]:
        shutil.copy(path, tmp_path / "reference")
    return tmp_path


def check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erpsync", "mappings", "check", "--schemas", str(project / "avro"),
         "--mappings", str(project / "mappings"), "--reference", str(project / "reference")],
        capture_output=True, text=True, timeout=120, check=False)


def test_the_example_passes_the_check_and_a_mistake_in_it_does_not(project: Path) -> None:
    done = check(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("erp.suppliers.postgres.sql, wms.mysql.sql): ok")
    mapping = project / "mappings" / "erp.suppliers.toml"
    mapping.write_text(mapping.read_text().replace('"decimal:2"', '"decimal:4"'))
    failed = check(project)
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[0] == (f"{mapping}: fields.min_order_value: erp.suppliers.min_order_value is "
                                             "decimal(12, 2): its scale is 2: use decimal:2")


def with_a_bad_row(fixture: Path, target: Path) -> Path:
    """The example's envelopes plus a create of SUP-3 with a negative lead time, as the README shows."""
    lines = fixture.read_text().splitlines()
    create = json.loads(lines[1])
    payload = json.loads(create["payload"])
    assert payload["op"] == "c"
    payload["after"] |= {"supplier_id": "SUP-3", "name": "Bad Data Ltd", "lead_time_days": -3}
    payload["source"] |= {"lsn": payload["source"]["lsn"] + 10, "sequence": "[null,\"40005000\"]"}
    bad = create | {"offset": len(lines), "key": '{"supplier_id":"SUP-3"}', "payload": json.dumps(payload)}
    target.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    return target


@pytest.mark.parametrize("workers", [1, 2])
def test_the_example_replays_through_the_pipeline(project: Path, workers: int) -> None:
    out = project / "out.jsonl"
    dump = with_a_bad_row(EXAMPLE / "erp.suppliers.jsonl", project / "dump.jsonl")
    settings = Settings(flows=FlowSettings(mappings_dir=project / "mappings"))
    counts = runner.replay(settings, SchemaRegistry.load(project / "avro"), dump, out, workers=workers)
    assert counts["canonical.supplier"] == 4 and counts["sync.dlq"] == 1 and counts["ignored:tombstone"] == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    supplier: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["topic"] == "canonical.supplier":
            supplier.setdefault(r["key"], []).append(r["value"])
    assert sorted(supplier) == ['["SUP-1"]', '["SUP-2"]']
    snapshot, deleted = supplier['["SUP-1"]']
    assert (snapshot["op"], snapshot["source"]["snapshot"], snapshot["min_order_value"]) == ("upsert", True, "250.00")
    assert deleted["op"] == "delete" and deleted["name"] is None  # PostgreSQL logs only the key of a delete
    created, updated = supplier['["SUP-2"]']
    assert (created["min_order_value"], created["status"]) == (None, "active")
    assert (updated["lead_time_days"], updated["min_order_value"], updated["status"]) == (10, "99.50", "blocked")
    assert updated["updated_at"] == "2026-11-27T11:00:00+00:00"  # timestamp-micros, as replay output shows it
    [dead] = [r for r in records if r["topic"] == "sync.dlq"]
    assert dead["key"] == '{"supplier_id":"SUP-3"}'
    [exception] = [r["value"] for r in records if r["topic"] == "sync.exceptions"]
    assert exception["kind"] == "dead_letter"
    assert exception["reason"] == "lead_time_days: -3 is below the minimum 0 (negative quantity)"


def test_the_readme_shows_the_example_files_as_they_are() -> None:
    readme = (MAPPINGS_DIR / "README.md").read_text()
    for name in FILES:
        assert f"schemas/mappings/example/{name}" in readme, name
    for name in FILES[:3]:
        match = re.search(rf"`schemas/mappings/example/{re.escape(name)}`:\n\n```\w*\n(.*?)```", readme, re.S)
        assert match, f"no code block for {name}"
        assert match.group(1) == (EXAMPLE / name).read_text(), f"the README's {name} differs from the file"
