"""Synthesize a large kcat -J dump from the captured Debezium envelopes (real shapes, new keys).

Usage: python -m bench.make_dump --events 1000000 --output /tmp/erpsync-bench.jsonl
The mix is WMS-heavy, like production: balance and allocation updates dominate.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from erpsync.progress import track

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "debezium"
MIX = [  # (topic, op, share)
    ("wms.wms.inventory_balances", "u", 0.45),
    ("wms.wms.allocations", "u", 0.15),
    ("erp.erp.sales_order_lines", "c", 0.15),
    ("erp.erp.sales_orders", "u", 0.10),
    ("erp.erp.items", "u", 0.05),
    ("erp.erp.customers", "u", 0.05),
    ("wms.wms.shipment_lines", "c", 0.05),
]


def templates() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for name in ("erp.jsonl", "wms.jsonl"):
        for line in (FIXTURES / name).read_text().splitlines():
            rec = json.loads(line)
            if rec["payload"]:
                env = json.loads(rec["payload"])
                if "op" in env:  # (transaction metadata has none)
                    out.setdefault((rec["topic"], env["op"]), env)
    return out


def generate(events: int, output: Path, keys: int = 100_000, seed: int = 7,
             on_event: Callable[[int], None] | None = None) -> None:
    rng = random.Random(seed)
    tmpl = templates()
    topics = [(t, op) for t, op, _ in MIX]
    weights = [w for _, _, w in MIX]
    offsets: dict[str, int] = {}
    lsn, binlog_pos = 50_000_000, 4
    with output.open("w") as fh:
        for _ in range(events):
            topic, op = rng.choices(topics, weights)[0]
            env = json.loads(json.dumps(tmpl[(topic, op)]))
            i = rng.randrange(keys)
            row = env["after"]
            for field in ("sku",):
                if field in row:
                    row[field] = f"SKU-{i:06d}"
            for field in ("order_id", "allocation_id", "shipment_id"):
                if field in row:
                    row[field] = i
            if "customer_id" in row:
                row["customer_id"] = f"C-{i:06d}"
            if "on_hand" in row:
                row["on_hand"] = rng.randrange(0, 500)
            src = env["source"]
            if topic.startswith("erp."):
                lsn += 64
                src["lsn"], src["sequence"] = lsn, json.dumps([str(lsn), str(lsn)])
            else:
                binlog_pos += 200
                src["pos"], src["row"] = binlog_pos, 0
            key = {k: row[k] for k in json.loads(tmpl_key(topic))}
            offset = offsets[topic] = offsets.get(topic, -1) + 1
            fh.write(json.dumps({"topic": topic, "partition": 0, "offset": offset,
                                 "key": json.dumps(key, separators=(",", ":")),
                                 "payload": json.dumps(env, separators=(",", ":"))}) + "\n")
            if on_event is not None:  # progress hook (erpsync.progress)
                on_event(1)


def tmpl_key(topic: str) -> str:
    for name in ("erp.jsonl", "wms.jsonl"):
        for line in (FIXTURES / name).read_text().splitlines():
            rec = json.loads(line)
            if rec["topic"] == topic:
                return json.dumps(list(json.loads(rec["key"])))
    raise KeyError(topic)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=Path("/tmp/erpsync-bench.jsonl"))
    args = parser.parse_args()
    with track("make_dump", total=args.events, unit="events") as progress:
        generate(args.events, args.output, on_event=progress.advance)
    print(f"wrote {args.events} events to {args.output}")
