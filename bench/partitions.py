"""Spread a kcat -J dump over N partitions per topic, as Connect's partitioned raw topics hold it.

Each record goes to the partition of its key (a key stays in one partition, in its order; records
without a key go to partition 0) and offsets count per partition. CRC-32 stands in for Kafka's
murmur2: what matters here is that a key has one partition. Debezium's transaction topics keep one
partition, as the connectors create them (a transaction's BEGIN and END differ in key).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path


def partition_of(topic: str, key: str | None, partitions: int) -> int:
    if key is None or topic.endswith(".transaction"):
        return 0
    return zlib.crc32(key.encode()) % partitions


def spread(source: Path, target: Path, partitions: int) -> None:
    offsets: dict[tuple[str, int], int] = {}
    with source.open() as lines, target.open("w") as out:
        for line in lines:
            record = json.loads(line)
            p = record["partition"] = partition_of(record["topic"], record.get("key"), partitions)
            record["offset"] = offsets[record["topic"], p] = offsets.get((record["topic"], p), -1) + 1
            out.write(json.dumps(record, separators=(",", ":")) + "\n")

