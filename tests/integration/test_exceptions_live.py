"""The exception queue and DLQ replay on the real stack.

A table captured before anyone wrote its mapping: its rows are dead letters ("no mapping"), each
also an open `dead_letter` exception. After the mapping is added (a file, no code) and the pipeline
restarted, `erpsync dlq replay` re-injects them: they land canonical and the exception turns
`replayed`; replaying again changes nothing. The queue CLI lists, shows and resolves exceptions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from connectors import ops_db
from erpsync.settings import Settings
from schemas.mapping import MAPPINGS_DIR
from schemas.registry import SchemaRegistry

from .conftest import Pipeline, read_canonical, unique

pytestmark = pytest.mark.integration

LEGACY_MAPPING = """system = "erp"
table = "erp.legacy_items"
entity = "item"

[fields]
sku = "string"
description = "string"
uom = "string"
safety_stock = { type = "int", min = 0, required = true }
status = { type = "enum", symbols = ["active", "discontinued"], required = true }
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync", *args], capture_output=True, text=True, timeout=120,
                          check=False, env=env)


def exception_rows(settings: Settings, where: str, *args: Any) -> list[dict[str, Any]]:
    with ops_db.connect(settings) as conn:
        cur = conn.execute(f"SELECT id, kind, state, business_key, occurrences, source, note FROM sync.exceptions"
                           f" WHERE {where}", args)
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def test_a_dead_letter_lands_after_its_mapping_is_added_and_its_exception_turns_replayed(
        tmp_path_factory: pytest.TempPathFactory, settings: Settings, erp: psycopg.Connection[Any]) -> None:
    home = tmp_path_factory.mktemp("dlq")
    mappings = home / "mappings"
    shutil.copytree(MAPPINGS_DIR, mappings)
    sku = f"LEGACY-{int(time.time() * 1000) % 10**9}"
    erp.execute("CREATE TABLE IF NOT EXISTS erp.legacy_items (sku text PRIMARY KEY, description text NOT NULL,"
                " uom text NOT NULL DEFAULT 'EA', safety_stock integer NOT NULL DEFAULT 0,"
                " status text NOT NULL DEFAULT 'active')")
    erp.execute("INSERT INTO erp.legacy_items (sku, description, safety_stock) VALUES (%s, 'Old catalogue bolt', 3)",
                (sku,))
    topic = "erp.erp.legacy_items"
    wait_for(lambda: topic in subprocess.run([sys.executable, "-c", (
        "from confluent_kafka.admin import AdminClient; from erpsync.settings import load_settings;"
        "print(list(AdminClient(load_settings().kafka.client_config()).list_topics(timeout=10).topics))")],
        capture_output=True, text=True, check=False).stdout,
        60, "Debezium to create the new table's topic")

    pipeline = Pipeline(home, ERPSYNC_FLOWS__MAPPINGS_DIR=str(mappings)).start()
    try:
        def dead() -> list[dict[str, Any]]:
            return [r for r in exception_rows(settings, "kind = 'dead_letter' AND source->>'topic' = %s", topic)
                    if r["state"] == "open"]
        rows = wait_for(dead, 180, "the unmapped row as an open dead_letter exception")
        shown = json.loads(cli("exceptions", "show", rows[0]["id"]).stdout)
        assert shown["reason"] == "no mapping for source table erp.erp.legacy_items"
        assert shown["source"]["topic"] == topic and shown["state"] == "open"
    finally:
        pipeline.stop()

    (mappings / "erp.legacy_items.toml").write_text(LEGACY_MAPPING)  # the fix: a mapping file, no code
    pipeline = Pipeline(home, ERPSYNC_FLOWS__MAPPINGS_DIR=str(mappings)).start()  # resumes from its snapshot
    try:
        first = cli("dlq", "replay", "--topic", topic)
        assert first.returncode == 0, first.stderr
        assert " 0 re-injected" not in first.stdout, first.stdout
        registry = SchemaRegistry.load()
        landed = read_canonical(settings, registry, ["canonical.item"], {json.dumps([sku], separators=(",", ":"))},
                                expected=1, timeout_s=120)
        assert landed and landed[0][2]["safety_stock"] == 3 and landed[0][2]["source"]["table"] == "erp.legacy_items"
        wanted = {r["id"] for r in rows}
        wait_for(lambda: wanted <= {r["id"] for r in exception_rows(
            settings, "kind = 'dead_letter' AND source->>'topic' = %s", topic) if r["state"] == "replayed"},
            60, "the exceptions to turn replayed")
        again = cli("dlq", "replay", "--topic", topic)  # idempotent: nothing left to re-inject
        assert again.returncode == 0 and " 0 re-injected" in again.stdout, again.stdout
    finally:
        pipeline.stop()

    listed = cli("exceptions", "list", "--kind", "dead_letter", "--state", "replayed", "--json", "--limit", "1000")
    assert listed.returncode == 0 and rows[0]["id"] in {r["id"] for r in json.loads(listed.stdout)}
    resolved = cli("exceptions", "resolve", rows[0]["id"], "--note", "legacy table mapped onto item")
    assert resolved.returncode == 0
    [row] = exception_rows(settings, "id = %s", rows[0]["id"])
    assert row["state"] == "resolved" and row["note"] == "legacy table mapped onto item"
    assert cli("exceptions", "resolve", "no-such-id", "--note", "x").returncode == 1


def test_the_queue_follows_an_exceptions_life_in_event_time(settings: Settings) -> None:
    """Raised, resolved by the pipeline (naming the clearing fact), raised again; late records change nothing."""
    from connectors.ops_db import UPSERT_EXCEPTION, connect, exception_row  # noqa: PLC0415
    from state import exception  # noqa: PLC0415

    key = unique("life")
    source = {"system": "erp", "table": "erp.invoices", "position": "p2", "tx_id": None, "commit_ts_ms": 2,
              "snapshot": False, "topic": "erp.erp.invoices", "partition": 0, "offset": 7}

    def write(*records: Any) -> dict[str, Any]:
        with connect(settings) as conn:
            for r in records:
                conn.execute(UPSERT_EXCEPTION, exception_row(r.value))
            conn.commit()
            row = conn.execute("SELECT state, occurrences, resolved_by, cleared_by, note, first_seen_ms, last_seen_ms"
                               " FROM sync.exceptions WHERE id = %s", (records[0].key,)).fetchone()
        assert row is not None
        return dict(zip(["state", "occurrences", "resolved_by", "cleared_by", "note", "first", "last"], row,
                        strict=True))

    opened = exception("invoice_discrepancy", "error", "order", key, "invoiced 99", {}, 1000)
    resolved = exception("invoice_discrepancy", "error", "order", key, "resolved: invoiced 99", {}, 2000,
                         source=source, state="resolved")
    again = exception("invoice_discrepancy", "error", "order", key, "invoiced 98", {}, 3000)
    row = write(opened)
    assert (row["state"], row["occurrences"]) == ("open", 1)
    row = write(resolved)
    assert (row["state"], row["resolved_by"], row["cleared_by"]["offset"]) == ("resolved", "erpsync", 7)
    row = write(opened, resolved)  # redelivered: nothing changes
    assert (row["state"], row["occurrences"], row["last"]) == ("resolved", 1, 2000)
    row = write(again)
    assert (row["state"], row["occurrences"], row["resolved_by"], row["note"]) == ("open", 2, None, None)
    row = write(resolved)  # an older resolution, read late: the newer occurrence stands
    assert (row["state"], row["last"]) == ("open", 3000)
