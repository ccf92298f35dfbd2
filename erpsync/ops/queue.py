"""The exception queue in the ops database, and re-injection of dead letters (spec section 9).

``erpsync exceptions list|show|resolve`` read and work ``sync.exceptions``; ``erpsync dlq replay``
re-injects dead-lettered records (after a mapping fix, say) into ``sync.dlq-replay``, which the
pipeline reads as the original records. Re-injection is idempotent: records whose exception is
already ``replayed`` are skipped, and the pipeline's per-key source-position fence ignores a record
it has already applied. Once a re-injected record lands canonical its exception turns ``replayed``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from connectors import kafka, ops_db
from erpsync.settings import Settings
from state.dead_letters import dead_letter_id
from state.records import DLQ_REPLAY_TOPIC, DLQ_TOPIC

COLUMNS = ("id", "kind", "severity", "entity", "business_key", "reason", "detail", "source", "first_seen_ms",
           "last_seen_ms", "occurrences", "state", "note", "state_changed_at")

def since_ms(value: str) -> int:
    """--since: epoch milliseconds, or an ISO-8601 time (UTC when it has no offset)."""
    if value.isdigit():
        return int(value)
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)

def list_exceptions(settings: Settings, *, kind: str | None = None, state: str | None = None,
                    since: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Exceptions, newest first (by last occurrence in event time)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("kind", kind), ("state", state)):
        if value:
            where.append(f"{column} = %s")
            args.append(value)
    if since is not None:
        where.append("last_seen_ms >= %s")
        args.append(since)
    sql = (f"SELECT {', '.join(COLUMNS)} FROM sync.exceptions {'WHERE ' + ' AND '.join(where) if where else ''}"
           " ORDER BY last_seen_ms DESC, id LIMIT %s")
    with ops_db.connect(settings) as conn:
        return [dict(zip(COLUMNS, row, strict=True)) for row in conn.execute(sql, [*args, limit])]

def show(settings: Settings, exception_id: str) -> dict[str, Any] | None:
    with ops_db.connect(settings) as conn:
        row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM sync.exceptions WHERE id = %s",
                           (exception_id,)).fetchone()
    return None if row is None else dict(zip(COLUMNS, row, strict=True))

def resolve(settings: Settings, exception_id: str, note: str) -> bool:
    """Mark an exception resolved with a note; False when there is no such exception."""
    with ops_db.connect(settings) as conn:
        cur = conn.execute("UPDATE sync.exceptions SET state = 'resolved', note = %s, resolved_by = current_user,"
                           " state_changed_at = now() WHERE id = %s", (note, exception_id))
        conn.commit()
        return cur.rowcount == 1

@dataclass
class ReplayResult:
    read: int = 0  # dead letters read
    matched: int = 0  # passing the --reason/--topic filters
    already_replayed: int = 0  # skipped: their exception is replayed already
    reinjected: int = 0

def replay_dead_letters(settings: Settings, *, reason: str | None = None, topic: str | None = None,
                        timeout_s: float = 30.0) -> ReplayResult:
    """Re-inject the dead letters matching the filters (substring of the reason, original topic)."""
    result = ReplayResult()
    wanted: list[tuple[bytes | None, bytes | None, list[tuple[str, Any]]]] = []
    for key, value, headers in _read_dead_letters(settings, timeout_s):
        result.read += 1
        h = {k: bytes(v or b"").decode() for k, v in headers}
        if (reason and reason not in h.get("reason", "")) or (topic and h.get("topic") != topic):
            continue
        result.matched += 1
        wanted.append((key, value, headers))
    replayed = _replayed_ids(settings)
    producer = Producer(settings.kafka.client_config() | {"enable.idempotence": True})
    failures: list[str] = []
    kafka.ensure_topics(settings, [DLQ_REPLAY_TOPIC], kafka.APPEND_TIME)
    for key, value, headers in wanted:
        h = {k: bytes(v or b"").decode() for k, v in headers}
        if dead_letter_id(h["topic"], int(h["partition"]), int(h["offset"])) in replayed:
            result.already_replayed += 1
            continue
        producer.produce(DLQ_REPLAY_TOPIC, key=key, value=value, headers=headers,
                         on_delivery=lambda err, msg: failures.append(str(err)) if err else None)
        result.reinjected += 1
    producer.flush(timeout_s)
    if failures:
        raise RuntimeError(f"{len(failures)} re-injections failed, first: {failures[0]}")
    return result

def _replayed_ids(settings: Settings) -> set[str]:
    with ops_db.connect(settings) as conn:
        return {row[0] for row in conn.execute(
            "SELECT id FROM sync.exceptions WHERE kind = 'dead_letter' AND state = 'replayed'")}

def _read_dead_letters(settings: Settings, timeout_s: float) -> list[tuple[bytes | None, bytes | None,
                                                                             list[tuple[str, Any]]]]:
    """Every record of sync.dlq, from the beginning to the end as of now."""
    consumer = Consumer(settings.kafka.client_config() | {"group.id": "erpsync-dlq-replay",
                                                          "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(DLQ_TOPIC, timeout=10)
        parts = meta.topics[DLQ_TOPIC].partitions if DLQ_TOPIC in meta.topics else {}
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(DLQ_TOPIC, p, OFFSET_BEGINNING) for p in ends])
        out: list[tuple[bytes | None, bytes | None, list[tuple[str, Any]]]] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                done.add(msg.partition() or 0)
                continue
            if (msg.offset() or 0) < ends[msg.partition() or 0]:
                out.append((msg.key(), msg.value(), _headers(msg.headers())))
            if (msg.offset() or 0) >= ends[msg.partition() or 0] - 1:
                done.add(msg.partition() or 0)
        if len(done) < len(ends):
            raise TimeoutError(f"read {len(out)} dead letters, not to the end of {DLQ_TOPIC} within {timeout_s}s")
        return out
    finally:
        consumer.close()


def _headers(headers: Any) -> list[tuple[str, Any]]:
    """confluent-kafka gives headers as a list of (key, bytes) pairs (or None)."""
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])
