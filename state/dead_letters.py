"""Dead letters as exceptions: every record the DLQ holds is also a replayable exception.

Its business key is the record's source coordinates (topic/partition/offset), so the exception
and the DLQ record find each other; ``erpsync dlq replay`` re-injects the record and, once it lands
canonical, the pipeline marks the exception ``replayed``.
"""

from __future__ import annotations

from typing import Any

from state import exception, exception_id
from state.records import DeadLetter, Emit, RawRecord

KIND = "dead_letter"


def coordinates(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """The exception id of the DLQ record that came from these coordinates."""
    return exception_id(KIND, topic, coordinates(topic, partition, offset))


def _source(raw: RawRecord) -> dict[str, Any]:
    return {"system": raw.topic.split(".", 1)[0], "table": raw.topic, "position": f"{raw.partition}/{raw.offset}",
            "tx_id": None, "commit_ts_ms": raw.timestamp_ms, "snapshot": False, "topic": raw.topic,
            "partition": raw.partition, "offset": raw.offset}


def dead_letter_exception(dead: DeadLetter) -> Emit:
    raw = dead.raw
    return exception(KIND, "error", raw.topic, coordinates(raw.topic, raw.partition, raw.offset), dead.reason,
                     {"step": dead.step, "key": None if raw.key is None else raw.key.decode("utf-8", "replace")},
                     raw.timestamp_ms, source=_source(raw))


def replayed_exception(raw: RawRecord, how: str) -> Emit:
    """The dead letter at raw's coordinates was replayed and landed (`how`: what it became)."""
    return exception(KIND, "error", raw.topic, coordinates(raw.topic, raw.partition, raw.offset),
                     f"replayed: {how}", {"replayed": how}, raw.timestamp_ms, source=_source(raw), state="replayed")
