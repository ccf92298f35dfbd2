"""Reading a source partition: Debezium change events to canonical events, in event time, with marks.

One ``PartitionReader`` state per input channel (a Kafka topic partition as read), so the state is
bounded and snapshotted only when the partition moved:

- **Event time** is the record's Kafka timestamp: the moment the change reached Kafka, which is
  what a pipeline that kept up acts on. It is in milliseconds for every source (MariaDB stamps rows
  in whole seconds), and it keeps moving while a connector catches up after an outage, so a late
  connector never delivers "old" changes. Dumps without timestamps fall back to Debezium's ``ts_ms``.
  Within a partition time only moves forward (a running maximum).
- **Marks**: after each batch the reader promises that nothing older than its newest time will
  come from this partition (``Mark``); a partition the source has read to its end (``Progress``) is
  promised up to the reader's clock minus a grace for in-flight records.
- **Transactions** are kept whole: the ``<prefix>.transaction`` topic (Debezium transaction metadata)
  tells when each source transaction began and ended; its marks stop before an open transaction and
  carry closed ones as spans, and sequencers never cut a span.
- **Redelivery**: Debezium replays changes after a connector restart. Within a partition, changes
  come in source-log order (an incremental snapshot's reads carry the log position of their chunk),
  so the newest position seen, and the keys seen at exactly that position, is a complete fence:
  anything before it, or at it with a key seen, was seen. It costs one position and one chunk of
  keys per partition, whatever the history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.mapping import BadValue, MappingSet, TableMapping
from state.records import EXCEPTIONS_TOPIC, DeadLetter, Emit, Ignored, Outcome, Progress, RawRecord
from state.sequencer import END_MS, Mark

STEP = "canonicalize"
# What Debezium's PostgreSQL connector sends for an unchanged TOASTed column it did not receive.
TOAST_PLACEHOLDER = "__debezium_unavailable_value"
HEARTBEAT_PREFIX = "__debezium-heartbeat"
TRANSACTION_SUFFIX = ".transaction"
SYSTEM_RANK = {"erp": 1, "wms": 2, "commerce": 3}  # order within one millisecond; other systems: 5
_SNAPSHOT_FALSE = frozenset({"false", None, False})
MAX_JSON_DEPTH = 64  # deeper documents are not change events, and would exhaust the parser
# Snapshot reads share one position; the keys seen at it are remembered up to this many (an
# incremental snapshot's chunk). An initial snapshot's repeats beyond it pass: consumers keep the
# newest position per row.
MAX_KEYS_AT_ONE_POSITION = 10_000


def encode_key(values: list[Any]) -> str:
    """Canonical topic key: the compact JSON array of the key values (strings and integers).

    Hand-rolled with json's C string escaper: this runs once per event and json.dumps costs more
    than everything else about a key.
    """
    return "[" + ",".join(_json_string(v) if isinstance(v, str) else str(v) for v in values) + "]"


_json_string = json.encoder.encode_basestring


@dataclass(frozen=True)
class EntityInfo:
    """What canonicalization needs to know of an entity's contract."""

    schema: str  # Avro full name
    owner: str  # system of record
    topic: str  # canonical topic


def source_position(source: Mapping[str, Any]) -> str | None:
    """A string whose lexicographic order is the change order within one source system.

    PostgreSQL: (last commit LSN, event LSN) from Debezium's ``sequence``; MariaDB/MySQL: (binlog
    file number, event position, row in event). Fixed-width fields make string order numeric.
    """
    connector = source.get("connector")
    try:
        if connector == "postgresql":
            # sequence is '["<last commit lsn>","<event lsn>"]' (either may be null)
            seq = source.get("sequence")
            last, current = seq.strip("[]").replace('"', "").split(",") if seq else ("null", "null")
            lsn = current if current != "null" else source["lsn"]
            return f"{int(last) if last != 'null' else 0:016x}/{int(lsn):016x}"
        if connector in ("mariadb", "mysql"):
            fileno = int(str(source["file"]).rsplit(".", 1)[1])
            return f"{fileno:06d}/{int(source['pos']):012d}/{int(source.get('row') or 0):06d}"
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None
    return None


def event_id(topic: str, position: str, key: str) -> str:
    """Deterministic from source coordinates, so a replay produces the same id."""
    return hashlib.blake2b(f"{topic}|{position}|{key}".encode(), digest_size=16).hexdigest()


def json_depth_ok(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets nest at most `limit` deep (counted on bytes: cheap, and safe before parsing)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True
    depth = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def loads(raw: bytes) -> Any:
    """Parse JSON whose nesting is bounded; ValueError (with a reason) otherwise."""
    if not json_depth_ok(raw):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(raw)


class Canonicalizer:
    """Turns one raw Debezium record into canonical events, DLQ records and counted ignores (stateless)."""

    def __init__(self, mappings: MappingSet, entities: Mapping[str, EntityInfo]) -> None:
        self.mappings = mappings
        self.entities = entities

    def convert(self, raw: RawRecord, time: int) -> list[Outcome]:
        topic = raw.topic
        if raw.value is None:
            # The delete event before it already carried the change; compaction needs the tombstone.
            return [Ignored("tombstone", topic, raw.partition, raw.offset)]
        if topic in self.mappings.ignored_topics:
            return [Ignored("ignored_table", topic, raw.partition, raw.offset)]
        mapping = self.mappings.by_topic.get(topic)
        if mapping is None:
            return [DeadLetter(raw, f"no mapping for source table {topic}", STEP)]
        try:
            envelope = loads(raw.value)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return [DeadLetter(raw, f"malformed JSON: {exc}", STEP)]
        if not isinstance(envelope, dict) or not isinstance(envelope.get("source"), dict):
            return [DeadLetter(raw, "not a Debezium change event (no source block)", STEP)]
        op = envelope.get("op")
        if op == "m":
            return [Ignored("logical_message", topic, raw.partition, raw.offset)]
        if op not in ("c", "r", "u", "d", "t"):
            return [DeadLetter(raw, f"unknown op {op!r}", STEP)]
        source = envelope["source"]
        position = source_position(source)
        if position is None:
            return [DeadLetter(raw, "no source position in the event's source block", STEP)]
        entity = self.entities[mapping.entity]
        if op == "t":
            return [DeadLetter(raw, f"TRUNCATE of {mapping.table}: the rows it removed are not in the change "
                                    "event; re-snapshot the table (an incremental snapshot signal)", STEP)]
        try:
            before_row = envelope.get("before")
            before = mapping.convert(before_row) if mapping.full_before_image and isinstance(before_row, dict) \
                else None
            if op == "d":
                fields = before if before is not None else mapping.key_of(before_row or _key_row(raw))
            else:
                after = envelope.get("after")
                if not isinstance(after, dict):
                    return [DeadLetter(raw, f"op {op!r} without an 'after' row", STEP)]
                fields = self._convert_merging_toast(mapping, after, before_row)
            values = [fields[k] for k in mapping.key]
            key = encode_key(values)
        except BadValue as exc:
            return [DeadLetter(raw, str(exc), STEP)]
        bad = [k for k, v in zip(mapping.key, values, strict=True)
               if isinstance(v, str) and any(ord(c) < 0x20 for c in v)]
        if bad:  # (the key's JSON escapes them): a NUL reaches no store, and no channel can use such a key
            return [DeadLetter(raw, f"control character in the key of {mapping.table} ({', '.join(bad)}): {key!r}",
                               STEP)]
        if mapping.system != entity.owner:
            return [self._sor_violation(raw, mapping, entity, key, source, position, time)]
        return [self._emit(raw, mapping, entity, key, source, position, op == "d", fields, before, time)]

    def _convert_merging_toast(self, mapping: TableMapping, after: dict[str, Any],
                               before: dict[str, Any] | None) -> dict[str, Any]:
        """Convert a row; an unchanged TOAST column takes its value from the before image (REPLICA IDENTITY FULL)."""
        if TOAST_PLACEHOLDER not in after.values():
            return mapping.convert(after)
        columns = [c for c, v in after.items() if v == TOAST_PLACEHOLDER]
        known = before if isinstance(before, dict) else {}
        missing = sorted(c for c in columns if c not in known or known[c] == TOAST_PLACEHOLDER)
        if missing:
            raise BadValue(f"unchanged TOAST value of {missing} in {mapping.table} without a before image; "
                           "set REPLICA IDENTITY FULL on the table")
        return mapping.convert({**after, **{c: known[c] for c in columns}})

    def _emit(
        self, raw: RawRecord, mapping: TableMapping, entity: EntityInfo, key: str, source: Mapping[str, Any],
        position: str, deleted: bool, fields: dict[str, Any], before: dict[str, Any] | None, time: int,
    ) -> Emit:
        value: dict[str, Any] = {
            "event_id": event_id(raw.topic, position, key),
            "op": "delete" if deleted else "upsert",
            "source": _source_block(raw, mapping, source, position),
        }
        if deleted:  # only the key, unless the source logs whole rows (full_before_image)
            keep = mapping.full_before_image
            value.update((f.name, fields.get(f.name) if keep or f.name in mapping.key else None)
                         for f in mapping.fields)
        else:
            value.update(fields)
        order = (SYSTEM_RANK.get(mapping.system, 5), position)
        tx_id = value["source"]["tx_id"]
        # snapshot reads of one chunk share a position: they are one consistent read, like a transaction
        tx = (mapping.system, tx_id) if tx_id is not None else (mapping.system, "@", position)
        return Emit(entity.topic, key, entity.schema, value, time, order, before, tx)

    def _sor_violation(
        self, raw: RawRecord, mapping: TableMapping, entity: EntityInfo, key: str,
        source: Mapping[str, Any], position: str, time: int,
    ) -> Emit:
        exc_id = hashlib.blake2b(f"sor_violation|{mapping.entity}|{key}".encode(), digest_size=16).hexdigest()
        return Emit(EXCEPTIONS_TOPIC, exc_id, "io.erpsync.SyncException", {
            "id": exc_id,
            "kind": "sor_violation",
            "severity": "error",
            "entity": mapping.entity,
            "business_key": key,
            "reason": f"{mapping.system} changed {mapping.entity}, which {entity.owner} owns; not applied",
            "detail": json.dumps({"table": mapping.table, "topic": raw.topic}),
            "source": _source_block(raw, mapping, source, position),
            "first_seen_ms": time,
            "last_seen_ms": time,
            "occurrences": 1,
            "state": "open",
        })


def _key_row(raw: RawRecord) -> dict[str, Any]:
    """The row key from the Kafka record key, for a delete without a 'before' image."""
    try:
        key = loads(raw.key) if raw.key else None
    except (ValueError, RecursionError):
        key = None
    if not isinstance(key, dict):
        raise BadValue("delete without a 'before' image or a readable key")
    return key


def _source_block(
    raw: RawRecord, mapping: TableMapping, source: Mapping[str, Any], position: str
) -> dict[str, Any]:
    tx = source.get("txId", source.get("gtid"))
    return {
        "system": mapping.system,
        "table": mapping.table,
        "position": position,
        "tx_id": None if tx is None else str(tx),
        "commit_ts_ms": int(source.get("ts_ms") or 0),
        "snapshot": source.get("snapshot") not in _SNAPSHOT_FALSE,
        "topic": raw.topic,
        "partition": raw.partition,
        "offset": raw.offset,
    }


# ----------------------------------------------------------------------------- the partition reader


@dataclass(slots=True)
class ReaderState:
    clock: int = -1  # newest event time read (a running maximum)
    sent: int = -1  # the last mark sent
    fence: str = ""  # newest source position of a streaming change applied
    at_fence: set[str] = field(default_factory=set)  # keys applied at exactly that position
    open_tx: int | None = None  # transaction topic: time its open transaction began
    closed: list[tuple[int, int]] = field(default_factory=list)  # spans closed since the last mark
    delayed: int = 0  # records that arrived after their partition's idle promise (see `_time`)

    def copy(self) -> ReaderState:
        return ReaderState(self.clock, self.sent, self.fence, set(self.at_fence), self.open_tx, list(self.closed),
                           self.delayed)

    def time_of(self, raw: RawRecord) -> int:
        """A record's event time on this partition: never before what the partition already promised.

        Read to its end, a partition promises the wall clock minus the grace; a record slower than
        that from its producer to here arrives behind the promise. It takes the first instant after
        it (counted in `delayed`), so the stages downstream never see an item behind their watermark.
        Replays promise nothing by the clock, so their times are the records' own.
        """
        time = max(self.clock, record_time(raw))
        if time <= self.sent:
            time = self.sent + 1
            self.delayed += 1
        self.clock = time
        return time


def record_time(raw: RawRecord, envelope: Mapping[str, Any] | None = None) -> int:
    """A record's event time: its Kafka timestamp, else Debezium's capture or commit time (dumps without one)."""
    if raw.timestamp_ms > 0:
        return raw.timestamp_ms
    if envelope is not None:
        for value in (envelope.get("ts_ms"), (envelope.get("source") or {}).get("ts_ms")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


class PartitionReader:
    """Reducer of one input channel: raw records in, canonical events (or `parse_other` items) and marks out.

    `parse_other(raw, time)` handles channels that carry no Debezium events (channel orders).
    `grace_ms`: how far behind its reader's clock a partition read to its end is promised.
    """

    def __init__(self, canonicalizer: Canonicalizer, grace_ms: int,
                 parse_other: Any = None, other_topics: frozenset[str] = frozenset()) -> None:
        self.canonicalizer = canonicalizer
        self.grace_ms = grace_ms
        self.parse_other = parse_other
        self.other_topics = other_topics

    def apply(self, state: ReaderState | None, item: RawRecord | Progress) -> tuple[ReaderState, list[Any]]:
        st = state or ReaderState()
        if isinstance(item, Progress):
            upto = END_MS if item.wall_ms is None else max(st.clock, item.wall_ms - self.grace_ms)
            return st, self._mark(st, item.channel, upto)
        raw = item
        if raw.topic.endswith(TRANSACTION_SUFFIX):
            return st, self._transaction(st, raw)
        if raw.topic.startswith(HEARTBEAT_PREFIX):
            st.clock = max(st.clock, raw.timestamp_ms)
            return st, [Ignored("heartbeat", raw.topic, raw.partition, raw.offset)]
        time = st.time_of(raw)
        if raw.topic in self.other_topics and not raw.replayed:
            return st, list(self.parse_other(raw, time))
        outcomes = self.canonicalizer.convert(raw, time)
        if raw.replayed or len(outcomes) != 1 or not isinstance(outcomes[0], Emit) \
                or outcomes[0].topic == EXCEPTIONS_TOPIC:
            return st, outcomes
        emit = outcomes[0]
        position = emit.value["source"]["position"]
        if position < st.fence or (position == st.fence and emit.key in st.at_fence):
            return st, [Ignored("duplicate_or_stale", raw.topic, raw.partition, raw.offset)]
        if position > st.fence:
            st.fence, st.at_fence = position, set()
        if len(st.at_fence) < MAX_KEYS_AT_ONE_POSITION:
            st.at_fence.add(emit.key)
        return st, outcomes

    def flush(self, st: ReaderState, channel: str) -> list[Mark]:
        """After a batch: promise everything older than the newest time read (equal times may follow)."""
        return self._mark(st, channel, st.clock - 1)

    def _mark(self, st: ReaderState, channel: str, upto: int) -> list[Mark]:
        if st.open_tx is not None:
            upto = min(upto, st.open_tx - 1)
        if upto <= st.sent and not st.closed:
            return []
        st.sent = max(st.sent, upto)
        spans, st.closed = tuple(st.closed), []
        return [Mark(channel, st.sent, spans)]

    def _transaction(self, st: ReaderState, raw: RawRecord) -> list[Any]:
        """Debezium transaction metadata: BEGIN opens a span, END closes it (ignored otherwise, counted)."""
        ignored = [Ignored("transaction_metadata", raw.topic, raw.partition, raw.offset)]
        try:
            doc = loads(raw.value or b"")
        except (UnicodeDecodeError, ValueError, RecursionError):
            return ignored
        time = st.time_of(raw)
        status = doc.get("status") if isinstance(doc, dict) else None
        if status == "BEGIN":
            st.open_tx = time
        elif status == "END" and st.open_tx is not None:
            st.closed.append((st.open_tx, time))
            st.open_tx = None
        return ignored
