"""The live pipeline: ERP/WMS changes -> Debezium -> `erpsync run` -> canonical.* topics (Avro).

Also checks that `erpsync replay` over a dump of the same raw records gives the same final records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.files import to_json
from erpsync.runner import replay
from erpsync.settings import Settings
from schemas.registry import SchemaRegistry

from .conftest import read_canonical, read_to_end, unique


def test_changes_reach_canonical_topics_in_order(pipeline, settings, erp, wms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = SchemaRegistry.load()
    sku = unique("SKU-LIVE")
    erp.execute("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'live', 1)", (sku,))
    for n in range(2, 6):
        erp.execute("UPDATE erp.items SET safety_stock = %s WHERE sku = %s", (n, sku))
    with wms.cursor() as cur:
        cur.execute("INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-EAST', 10)", (sku,))
        for n in range(9, 4, -1):
            cur.execute("UPDATE inventory_balances SET on_hand = %s WHERE sku = %s AND location = 'DC-EAST'",
                        (n, sku))
        cur.execute("DELETE FROM inventory_balances WHERE sku = %s AND location = 'DC-EAST'", (sku,))
    item_key, pos_key = json.dumps([sku]), json.dumps([sku, "DC-EAST"], separators=(",", ":"))
    records = read_canonical(settings, registry, ["canonical.item", "canonical.inventory-position"],
                             {item_key, pos_key}, expected=5 + 7, timeout_s=240)  # a fresh pipeline: history first
    items = [v for t, k, v in records if k == item_key]
    balances = [v for t, k, v in records if k == pos_key]
    assert [v["safety_stock"] for v in items] == [1, 2, 3, 4, 5]
    assert [v["on_hand"] for v in balances] == [10, 9, 8, 7, 6, 5, 5]  # the delete carries the full row
    assert balances[-1]["op"] == "delete"
    for seq in (items, balances):
        positions = [v["source"]["position"] for v in seq]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)

    # The same raw records, dumped as kcat -J would and replayed offline, give the same finals.
    dump = tmp_path / "dump.jsonl"
    dump_raw(settings, ["erp.erp.items", "wms.wms.inventory_balances"], {sku}, dump)
    out = tmp_path / "replay.jsonl"
    replay(settings, registry, dump, out)
    replayed: dict[tuple[str, str], Any] = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        if rec["topic"].startswith("canonical."):
            replayed[(rec["topic"], rec["key"])] = rec["value"]
    live_final = {(t, k): v for t, k, v in records}
    assert set(replayed) == set(live_final)
    for key, value in live_final.items():
        assert json.loads(json.dumps(value, default=to_json)) == replayed[key]


def dump_raw(settings: Settings, topics: list[str], marks: set[str], path: Path) -> None:
    lines = []
    for msg in read_to_end(settings, topics):
        key = (msg.key() or b"").decode()
        if any(m in key for m in marks):
            value = msg.value()
            lines.append(json.dumps({"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                                     "key": key, "payload": value.decode() if value is not None else None}))
    path.write_text("\n".join(lines) + "\n")
