"""`erpsync replay --processes 2` (a bytewax cluster of two processes) writes what one process writes.

Real subprocesses through the command line: the records of a key may be read by one process and
their state kept by the other, so every keyed step's routing and every exchange between processes
is on the path. Compared per key: each (topic, key)'s records in order, so its final value, and
the records per topic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.make_dump import generate
from bench.partitions import spread

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"


def captured(path: Path) -> None:
    """The captured Debezium envelopes of every mapped table, transaction metadata and heartbeats (1 partition)."""
    names = ("erp.jsonl", "wms.jsonl", "heartbeats.jsonl")
    path.write_bytes(b"".join((FIXTURES / name).read_bytes() for name in names))


def captured_partitioned(path: Path) -> None:
    """The same, each change topic spread over 4 partitions by key (as Connect creates them)."""
    captured(path.with_suffix(".one"))
    spread(path.with_suffix(".one"), path, 4)


def synthetic_partitioned(path: Path) -> None:
    """Synthetic changes over 500 keys, spread over 4 partitions."""
    generate(3000, path.with_suffix(".one"), 500)  # 500 keys (SKUs, orders, ...): each changed several times
    spread(path.with_suffix(".one"), path, 4)


def replay(dump: Path, out: Path, *cluster: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "erpsync", "-v", "replay", "--input", str(dump), "--output",
                             str(out), *cluster], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def histories(out: Path) -> dict[tuple[str, str | None], list[object]]:
    """(topic, key) -> its records' values, in the order written."""
    found: dict[tuple[str, str | None], list[object]] = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        found.setdefault((record["topic"], record["key"]), []).append(record["value"])
    return found


def synthetic_large(path: Path) -> None:
    """30,000 synthetic changes over 6 partitions: batches big enough that the exchanges between the
    processes lag, so a mark that can overtake the items it covers does (it did: 2026-12-01)."""
    generate(30_000, path.with_suffix(".one"))
    spread(path.with_suffix(".one"), path, 6)


@pytest.mark.parametrize("make_dump", [captured, captured_partitioned, synthetic_partitioned, synthetic_large])
def test_two_processes_write_what_one_writes(tmp_path: Path, make_dump: Callable[[Path], None]) -> None:
    dump = tmp_path / "dump.jsonl"
    make_dump(dump)
    replay(dump, tmp_path / "one.jsonl")
    two = replay(dump, tmp_path / "two.jsonl", "--processes", "2", "--workers", "1")
    assert "started 2 processes" in two.stderr  # a cluster indeed (erpsync.cluster.LocalCluster)
    # no item reached a stage after a mark that covers it (the stage would release it out of order)
    assert "behind the watermark" not in two.stderr, two.stderr[-3000:]

    one, both = histories(tmp_path / "one.jsonl"), histories(tmp_path / "two.jsonl")
    counts = Counter(topic for (topic, _), values in one.items() for _ in values)
    assert sum(counts.values()) > 50 and len(counts) > 8  # the pipeline's outputs, not an empty run
    assert Counter(topic for (topic, _), values in both.items() for _ in values) == counts
    assert {k: v[-1] for k, v in both.items()} == {k: v[-1] for k, v in one.items()}  # final values per key
    assert both == one  # and every record of a key, in order
